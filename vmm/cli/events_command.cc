// `immortal events NAME [--json] [--follow]`: what happened to an instance, from its supervisor,
// from the log it left when it has ended, or as it happens.
#include "base/error.h"
#include "base/terminal_text.h"
#include "base/io.h"
#include "base/unique_fd.h"
#include "cli/commands.h"
#include "cli/event_follower.h"
#include "cli/instance_call.h"
#include "instance.h"

#include <fmt/format.h>
#include <fmt/ranges.h>

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

// `events --follow`: the last `backlog` events, then each new one as it is written, until the
// instance ends.
void follow_events(const std::string& root, const std::string& name, std::size_t backlog,
                   const std::function<void(const json&)>& print) {
  EventFollower follower(root, name, /*from_end=*/false);
  auto first = follower.next(std::chrono::milliseconds(0));
  for (std::size_t i = first.size() > backlog ? first.size() - backlog : 0; i < first.size(); ++i) print(first[i]);
  std::cout.flush();
  while (!follower.ended()) {
    for (const auto& e : follower.next(std::chrono::seconds(1))) print(e);
    std::cout.flush();
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
    std::cout << fmt::format("{}  {:<16}{:<5}{}\n", terminal_safe(e.value("time", "")), terminal_safe(what), crash,
                             terminal_safe(text));
  }
}

}  // namespace

}  // namespace immortal::vmm
