#include "control/live_introspection.h"

#include "base/budgets.h"
#include "base/error.h"
#include "base/json_depth.h"
#include "live_kernel.h"
#include "repair/agent_process.h"
#include "repair/repair_image.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <fmt/format.h>

#include <filesystem>
#include <utility>

namespace immortal::vmm {

namespace {

constexpr int kFailure = static_cast<int>(ExitCode::failure);
// {"tasks": [{"pid": …}]}: three levels; a little room, never what a recursion would mind.
constexpr std::size_t kAnswerDepth = 4;
constexpr std::size_t kTextBytes = 64 * 1024;  // a log record's text at most (printk's own limit is lower)
constexpr std::size_t kFieldBytes = 4096;      // names, states, addresses, problems
constexpr std::size_t kReadPerPoll = 4 << 20;  // of an answer, per turn of the loop

enum class Kind { integer, unsigned_integer, boolean, text, long_text };

bool has_kind(const json& v, Kind kind) {
  switch (kind) {
    case Kind::integer: return v.is_number_integer();
    case Kind::unsigned_integer: return v.is_number_unsigned();
    case Kind::boolean: return v.is_boolean();
    case Kind::text: return v.is_string() && v.get_ref<const std::string&>().size() <= kFieldBytes;
    case Kind::long_text: return v.is_string() && v.get_ref<const std::string&>().size() <= kTextBytes;
  }
  return false;
}

struct Field {
  const char* name;
  Kind kind;
  bool optional = false;
};

// The fields of `spec` from `from`, each of its kind; Error naming the first that is not.
json take_fields(const json& from, std::initializer_list<Field> spec, const char* what) {
  if (!from.is_object()) fail(ExitCode::bad_input, "{} is not an object", what);
  json out = json::object();
  for (const auto& f : spec) {
    auto it = from.find(f.name);
    if (it == from.end()) {
      if (f.optional) continue;
      fail(ExitCode::bad_input, "{} has no {}", what, f.name);
    }
    if (!has_kind(*it, f.kind)) fail(ExitCode::bad_input, "{}'s {} is not what it should be", what, f.name);
    out[f.name] = *it;
  }
  return out;
}

json take_list(const json& from, const char* key, std::initializer_list<Field> spec, const char* what) {
  auto it = from.find(key);
  if (it == from.end() || !it->is_array()) fail(ExitCode::bad_input, "the answer's {} are not a list", key);
  json out = json::array();
  for (const auto& item : *it) out.push_back(take_fields(item, spec, what));
  return out;
}

}  // namespace

json accept_introspection_answer(const std::string& part, std::string_view answer) {
  if (answer.size() > budget::kIntrospectionAnswerBytes)
    fail(ExitCode::bad_input, "the answer is larger than {} bytes", budget::kIntrospectionAnswerBytes);
  if (json_nesting_depth(answer) > kAnswerDepth) fail(ExitCode::bad_input, "the answer is nested deeper than {}", kAnswerDepth);
  json a = json::parse(answer, nullptr, false);
  if (a.is_discarded() || !a.is_object()) fail(ExitCode::bad_input, "the answer is not a JSON object");
  json out;
  if (part == "tasks") {
    out = take_fields(a, {{"complete", Kind::boolean}, {"problem", Kind::text, true}}, "the answer");
    out["tasks"] = take_list(a, "tasks",
                             {{"pid", Kind::integer}, {"tgid", Kind::integer}, {"ppid", Kind::integer}, {"comm", Kind::text},
                              {"state", Kind::text}, {"kthread", Kind::boolean}, {"address", Kind::text}},
                             "a task");
  } else if (part == "modules") {
    out = take_fields(a, {{"complete", Kind::boolean}, {"problem", Kind::text, true}}, "the answer");
    out["modules"] = take_list(a, "modules",
                               {{"name", Kind::text}, {"state", Kind::text}, {"base", Kind::text},
                                {"size", Kind::unsigned_integer}, {"text_size", Kind::unsigned_integer}},
                               "a module");
  } else if (part == "dmesg") {
    out = take_fields(a, {{"skipped", Kind::unsigned_integer}, {"truncated", Kind::boolean}, {"panic_message", Kind::long_text}},
                      "the answer");
    out["records"] = take_list(a, "records",
                               {{"seq", Kind::unsigned_integer}, {"ts_nsec", Kind::unsigned_integer}, {"level", Kind::integer},
                                {"text", Kind::long_text}},
                               "a log record");
  } else {
    fail(ExitCode::usage, "unknown part \"{}\"", part);
  }
  return out;
}

struct LiveIntrospection::Job {
  ControlRequest request;
  std::string part;
  pid_t pid = -1;
  UniqueFd doorbell, answer, log;
  bool walked = false;  // the walk is done: its answer is being read
  Clock::time_point deadline;
  std::string text;
};

LiveIntrospection::LiveIntrospection(std::string agent, std::string profile_dir, Machine& machine)
    : agent_(std::move(agent)), profile_dir_(std::move(profile_dir)), machine_(machine) {}

LiveIntrospection::~LiveIntrospection() {
  for (auto& job : jobs_) finish(*job, "the instance is stopping");
}

void LiveIntrospection::start(ControlRequest request, const std::string& part) {
  if (jobs_.size() >= budget::kIntrospections)
    return request.fail(kFailure, fmt::format("{} views of this guest are being read already: try again when they are done",
                                              budget::kIntrospections));
  auto ram = machine_.ram_file();
  if (!ram)
    return request.fail(static_cast<int>(ExitCode::unsupported),
                        fmt::format("the {} backend keeps guest RAM where the introspection agent cannot map it", machine_.backend()));
  if (!std::filesystem::exists(profile_dir_))
    return request.fail(kFailure, "no profile of the guest's kernel yet (its agent has not sent one)");
  auto job = std::make_unique<Job>();
  job->request = std::move(request);
  job->part = part;
  job->deadline = Clock::now() + std::chrono::seconds(budget::kIntrospectionSeconds);
  try {
    json request_json = ram_layout_json(*ram);
    request_json["part"] = part;
    UniqueFd request_fd = sealed_memfd_with("immortal-introspect-request", request_json.dump());
    UniqueFd ram_ro = reopen_read_only(ram->fd);
    if (!ram_ro) fail_os(ExitCode::failure, "reopen guest RAM read-only", errno);
    Doorbell doorbell = make_doorbell();
    job->log = agent_log_memfd("immortal-introspect-log");
    int out[2];
    if (::pipe2(out, O_CLOEXEC) != 0) fail_os(ExitCode::failure, "pipe", errno);
    job->answer = UniqueFd(out[0]);
    UniqueFd answer_write(out[1]);
    ::fcntl(job->answer.get(), F_SETFL, O_NONBLOCK);
    job->doorbell = std::move(doorbell.ours);
    job->pid = start_agent_process({find_repair_agent(agent_), "--introspect", "--profile", profile_dir_},
                                   {request_fd.get(), answer_write.get(), job->log.get(), ram_ro.get(), doorbell.theirs.get()});
  } catch (const std::exception& e) {
    return job->request.fail(kFailure, std::string("cannot start the introspection agent: ") + e.what());
  }
  jobs_.push_back(std::move(job));
}

void LiveIntrospection::add_to(std::vector<pollfd>& fds) const {
  for (const auto& job : jobs_) fds.push_back({job->walked ? job->answer.get() : job->doorbell.get(), POLLIN, 0});
}

void LiveIntrospection::poll() {
  for (auto it = jobs_.begin(); it != jobs_.end();) {
    bool done = true;
    try {
      done = step(**it);
    } catch (const std::exception& e) {
      finish(**it, e.what());
    }
    it = done ? jobs_.erase(it) : it + 1;
  }
}

bool LiveIntrospection::step(Job& job) {
  if (Clock::now() > job.deadline) {
    finish(job, fmt::format("the introspection agent took longer than {} s: killed", budget::kIntrospectionSeconds));
    return true;
  }
  if (!job.walked) {
    if (!wait_readable(job.doorbell.get(), Deadline::in(std::chrono::milliseconds(0)))) return false;
    char c = 0;
    if (::read(job.doorbell.get(), &c, 1) != 1 || c != 'r') {
      finish(job, "the introspection agent stopped before it found the guest's kernel");
      return true;
    }
    walk(job);
    return job.request.answered();
  }
  for (std::size_t read = 0;;) {
    if (read >= kReadPerPoll) return false;  // the rest at the next turn: the loop has more to do
    bool would_block = false;
    std::string chunk = read_some(job.answer.get(), 1 << 20, &would_block);
    if (would_block) return false;
    if (chunk.empty()) break;  // the agent closed its end: the whole answer is here
    read += chunk.size();
    job.text += chunk;
    if (job.text.size() > budget::kIntrospectionAnswerBytes) {
      finish(job, fmt::format("the introspection agent's answer is larger than {} bytes: killed", budget::kIntrospectionAnswerBytes));
      return true;
    }
  }
  finish(job, "");
  return true;
}

void LiveIntrospection::walk(Job& job) {
  // The guest stands still while the agent walks its lists (tasks, modules, the log change under
  // a running guest); only for that.
  PauseGuard paused(machine_);
  char c = 'w';
  if (::write(job.doorbell.get(), &c, 1) != 1) return finish(job, "the introspection agent's channel is closed");
  if (!wait_readable(job.doorbell.get(), Deadline::in(std::chrono::milliseconds(budget::kIntrospectionPauseMs))))
    return finish(job, fmt::format("the introspection agent's walk took longer than {} ms with the guest paused: killed",
                                   budget::kIntrospectionPauseMs));
  if (::read(job.doorbell.get(), &c, 1) != 1 || c != 'd') return finish(job, "the introspection agent stopped during its walk");
  paused.release();
  job.walked = true;
}

void LiveIntrospection::finish(Job& job, const std::string& failure) {
  int status = 0;
  bool exited_well = false;
  if (job.pid > 0) {
    // It has closed its answer (or failed): whatever it does now, it is done.
    ::kill(job.pid, SIGKILL);
    ::waitpid(job.pid, &status, 0);
    exited_well = WIFEXITED(status) && WEXITSTATUS(status) == 0;
    job.pid = -1;
  }
  if (job.request.answered()) return;
  std::string why = failure;
  if (why.empty() && !exited_well) why = "the introspection agent failed";
  if (why.empty()) {
    try {
      return job.request.reply(accept_introspection_answer(job.part, job.text));
    } catch (const std::exception& e) {
      why = std::string("the introspection agent's answer was refused: ") + e.what();
    }
  }
  job.request.fail(kFailure, agent_failure(why, status, job.log.get()));
}

}  // namespace immortal::vmm
