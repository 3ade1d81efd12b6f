// `immortal events NAME [--json] [--follow]`: what happened to an instance, from its supervisor,
// from the log it left when it has ended, or as it happens.
#include "base/error.h"
#include "base/io.h"
#include "base/unique_fd.h"
#include "cli/commands.h"
#include "cli/instance_call.h"
#include "instance.h"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <poll.h>
#include <sys/inotify.h>
#include <unistd.h>

#include <deque>
#include <fstream>
#include <functional>
#include <iostream>
#include <thread>

namespace immortal::vmm {

using json = nlohmann::json;

// The events of an instance that has ended (its guest powered off, or it was stopped), from the
// log its supervisor left in the instance directory, as virsh still describes a shut-off domain.
static json events_of_ended_instance(const std::string& root, const std::string& name) {
  std::ifstream in(root + "/" + name + "/events.jsonl");
  if (!in) fail(ExitCode::no_instance, "no instance named \"{}\" (running, or with an event log left)", name);
  json events = json::array();
  std::string line;
  while (std::getline(in, line)) {
    json e = json::parse(line, nullptr, false);
    if (e.is_object()) events.push_back(std::move(e));  // a line cut short by a killed supervisor is skipped
  }
  std::cerr << fmt::format("immortal: instance \"{}\" has ended; its events are read from its log\n", name);
  return events;
}

namespace {

void print_event(const json& e, bool as_json);

// `events --follow`: every event is appended to the instance's log before anything else sees it,
// so following the file (inotify on its directory: it may be replaced by a new run) shows each as
// it happens; the last `backlog` first. Ends once the instance has ended and its log is read.
void follow_events(const std::string& root, const std::string& name, std::size_t backlog,
                   const std::function<void(const json&)>& print) {
  std::string dir = root + "/" + name, path = dir + "/events.jsonl";
  if (!instance_running(root, name) && ::access(path.c_str(), R_OK) != 0)
    fail(ExitCode::no_instance, "no instance named \"{}\" (running, or with an event log left)", name);
  UniqueFd watch(::inotify_init1(IN_CLOEXEC | IN_NONBLOCK));
  if (!watch || ::inotify_add_watch(watch.get(), dir.c_str(), IN_MODIFY | IN_CREATE | IN_MOVED_TO) < 0)
    fail_os(ExitCode::failure, "watch " + dir, errno);
  std::uint64_t offset = 0;
  std::string partial;
  std::deque<json> first;  // the backlog, printed before anything new
  bool started = false;
  auto read_new = [&] {
    std::ifstream in(path, std::ios::binary);
    if (!in) return;
    in.seekg(0, std::ios::end);
    auto size = static_cast<std::uint64_t>(in.tellg());
    if (size < offset) offset = 0, partial.clear();  // a new log (the instance was started again)
    if (!started && size > (1u << 20)) offset = size - (1u << 20);  // the backlog is in the last MiB
    in.seekg(static_cast<std::streamoff>(offset));
    std::string chunk(size - offset, '\0');
    in.read(chunk.data(), static_cast<std::streamsize>(chunk.size()));
    offset += static_cast<std::uint64_t>(in.gcount());
    partial.append(chunk.data(), static_cast<std::size_t>(in.gcount()));
    for (std::size_t nl; (nl = partial.find('\n')) != std::string::npos; partial.erase(0, nl + 1)) {
      json e = json::parse(partial.substr(0, nl), nullptr, false);
      if (!e.is_object()) continue;  // a line cut short (a killed supervisor), or the backlog's first
      if (started) {
        print(e);
      } else if (first.push_back(std::move(e)); first.size() > backlog) {
        first.pop_front();
      }
    }
    std::cout.flush();
  };
  read_new();
  for (const auto& e : first) print(e);
  std::cout.flush();
  started = true;
  for (;;) {
    bool ended = !instance_running(root, name);
    read_new();
    if (ended) return;
    pollfd p{watch.get(), POLLIN, 0};
    ::poll(&p, 1, 500);  // a change, or a look whether the instance is still there
    char drain[4096];
    while (::read(watch.get(), drain, sizeof drain) > 0) {
    }
  }
}

}  // namespace

int events_command(const GlobalOptions& g, const std::string& name, bool as_json, bool follow) {
  check_instance_name(name);
  json events;
  if (follow) {
    follow_events(runtime_root(g.runtime_dir), name, 32, [&](const json& e) { print_event(e, as_json); });
    return 0;
  }
  try {
    events = call_instance(g, name, {{"command", "events"}}, kBusySupervisorWait).value("events", json::array());
  } catch (const Error&) {
    // Ended before or while we asked (a supervisor that is shutting down answers no more, and
    // holds its lock a moment longer): its log stays behind.
    std::string root = runtime_root(g.runtime_dir);
    auto deadline = Deadline::in(std::chrono::seconds(10));
    while (instance_running(root, name) && !deadline.expired())
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    if (instance_running(root, name)) throw;
    events = events_of_ended_instance(root, name);
  }
  for (const auto& e : events) print_event(e, as_json);
  return 0;
}

namespace {

// One event: its JSON line, or a line for people (time, event, crash number, what it says).
void print_event(const json& e, bool as_json) {
  {
    if (as_json) {
      std::cout << e.dump() << "\n";
      return;
    }
    std::string what = e.value("event", "");
    std::string text;
    if (what == "repair-image")
      text = fmt::format("{:.1f} MiB (healthy code copy {:.1f} MiB in {} regions), built in {:.0f} ms",
                         e.value("bytes", 0.0) / 1048576, e.value("healthy_bytes", 0.0) / 1048576, e.value("regions", 0),
                         e.value("build_ms", 0.0));
    else if (what == "repair-fallback")
      text = fmt::format("{} → {}: {}", e.value("from", ""), e.value("to", ""), e.value("why", ""));
    else if (what == "repair-mismatch")
      text = fmt::format("the {} and {} engines disagree on this crash", e.value("mode", ""),
                         e.value("other", json::object()).value("mode", ""));
    else if (what.rfind("repair-", 0) == 0)
      text = e.value("mode", "") + (e.contains("error") ? ": " + e.value("error", "")
                                    : e.contains("start_ms") ? fmt::format(" ready in {:.0f} ms", e.value("start_ms", 0.0)) : "");
    else if (e.contains("summary")) text = e["summary"].get<std::string>();
    else if (e.contains("plan") && e["plan"].is_object())
      text = (e["plan"].value("resume", false) ? "resume: " : "reboot: ") + e["plan"].value("reason", std::string());
    else if (e.contains("path")) text = e["path"].get<std::string>();
    else if (e.contains("reason")) text = e["reason"].get<std::string>();
    else if (e.contains("actions")) text = fmt::format("{} — resumed {:.1f} ms after interception", e["actions"].get<std::string>(),
                                                       e.value("intercept_to_resume_ms", 0.0));
    else if (e.contains("verify_ms"))
      text = fmt::format("agent answered {:.0f} ms after resuming; every check held for the {:.1f} s watch window",
                         e["verify_ms"].get<double>(), e.value("window_ms", 0.0) / 1000);
    else if (e.contains("boot_id")) text = "boot id " + e["boot_id"].get<std::string>();
    else if (e.contains("interception")) text = fmt::format("{}", fmt::join(e["interception"].get<std::vector<std::string>>(), ", "));
    std::string crash = e.contains("crash") && e["crash"].is_number_unsigned() ? fmt::format("#{}", e["crash"].get<std::uint64_t>()) : "";
    std::cout << fmt::format("{}  {:<16}{:<5}{}\n", e.value("time", ""), what, crash, text);
  }
}

}  // namespace

}  // namespace immortal::vmm
