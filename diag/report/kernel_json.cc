#include "report/kernel_json.h"

#include "base/terminal_text.h"

#include "kernel/modules.h"
#include "kernel/printk.h"
#include "kernel/tasks.h"

#include <fmt/format.h>

namespace immortal {

using nlohmann::json;

json task_json(const TaskInfo& t) {
  return {{"pid", t.pid}, {"tgid", t.tgid}, {"ppid", t.parent_pid}, {"comm", t.comm},
          {"state", std::string(1, t.state)}, {"kthread", t.kernel_thread}, {"address", fmt::format("{:#x}", t.address)}};
}

namespace {
// {"<name>": items, "complete": bool, "problem"?: why the walk stopped}
json list_json(const char* name, json items, const WalkResult& walk) {
  json out = {{name, std::move(items)}, {"complete", walk.complete}};
  if (!walk.complete) out["problem"] = walk.problem;
  return out;
}
}  // namespace

json tasks_json(const Kernel& kernel) {
  TaskList list = read_tasks(kernel);
  json tasks = json::array();
  for (const auto& t : list.tasks) tasks.push_back(task_json(t));
  return list_json("tasks", std::move(tasks), list.walk);
}

json modules_json(const Kernel& kernel) {
  ModuleList list = read_modules(kernel);
  json modules = json::array();
  for (const auto& m : list.modules)
    modules.push_back({{"name", m.name}, {"state", m.state}, {"base", fmt::format("{:#x}", m.base)}, {"size", m.size},
                       {"text_size", m.text_size}});
  return list_json("modules", std::move(modules), list.walk);
}

json kernel_log_json(const Kernel& kernel) {
  KernelLog log = read_kernel_log(kernel);
  json records = json::array();
  for (const auto& r : log.records)
    records.push_back({{"seq", r.seq}, {"ts_nsec", r.ts_nsec}, {"level", r.level}, {"text", r.text}});
  return {{"records", records}, {"skipped", log.skipped}, {"truncated", log.truncated}, {"panic_message", panic_message(log)}};
}

std::string render_tasks(const json& tasks) {
  std::string out = fmt::format("{:>7} {:>7} {:>2}  {}\n", "PID", "PPID", "ST", "COMM");
  for (const auto& t : tasks) {
    bool kthread = t.value("kthread", false);
    out += fmt::format("{:>7} {:>7} {:>2}  {}{}{}\n", t.value("pid", 0), t.value("ppid", 0), t.value("state", "?"),
                       kthread ? "[" : "", terminal_safe(t.value("comm", "")), kthread ? "]" : "");
  }
  return out;
}

std::string render_modules(const json& modules) {
  std::string out = fmt::format("{:<24} {:>18} {:>9}  {}\n", "MODULE", "BASE", "SIZE", "STATE");
  for (const auto& m : modules)
    out += fmt::format("{:<24} {:>18} {:>9}  {}\n", terminal_safe(m.value("name", "")), m.value("base", ""),
                       m.value("size", 0), terminal_safe(m.value("state", "")));
  return out;
}

std::string render_kernel_log(const json& records) {
  std::string out;
  for (const auto& l : records) {
    std::uint64_t ts = l.value("ts_nsec", 0ull);
    // Like the kernel's syslog output (and so dmesg), every line of a record gets the prefix.
    std::string prefix = fmt::format("[{:5}.{:06}] ", ts / 1'000'000'000, (ts % 1'000'000'000) / 1000);
    std::string text = l.value("text", "");
    std::size_t start = 0;
    do {
      auto nl = text.find('\n', start);
      out += prefix + terminal_safe(std::string_view(text).substr(start, nl == std::string::npos ? std::string::npos : nl - start)) + "\n";
      start = nl == std::string::npos ? text.size() + 1 : nl + 1;
    } while (start <= text.size());
  }
  return out;
}

}  // namespace immortal
