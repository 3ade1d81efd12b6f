#include "engine/kernel_consistency.h"

#include "kernel/modules.h"
#include "kernel/tasks.h"

#include <fmt/format.h>

namespace immortal::repair {

namespace {

constexpr std::size_t kConsistencyMaxTasks = 1 << 20;  // Linux's PID_MAX_LIMIT is 4 Mi; 1 Mi tasks is plenty
constexpr std::uint64_t kMaxModuleSize = 1ull << 30;

bool printable_name(const std::string& name) {
  if (name.empty()) return false;
  for (char c : name)
    if (c < 0x21 || c > 0x7e) return false;
  return true;
}

}  // namespace

std::vector<std::string> check_kernel_consistency(const Kernel& kernel) {
  std::vector<std::string> problems;
  try {
    TaskList tasks = read_tasks(kernel, kConsistencyMaxTasks);
    if (!tasks.walk.complete) problems.push_back("the task list is damaged: " + tasks.walk.problem);
  } catch (const std::exception& e) {
    problems.push_back(std::string("the task list is unreadable: ") + e.what());
  }
  try {
    std::uint64_t name_size = kernel.types().require_field("module", "name").size;
    ModuleList mods = read_modules(kernel);
    if (!mods.walk.complete) problems.push_back("the module list is damaged: " + mods.walk.problem);
    for (const auto& m : mods.modules) {
      if (!printable_name(m.name) || m.name.size() >= name_size)
        problems.push_back(fmt::format("the module at {:#x} has no proper name", m.address));
      else if (m.state == "live" && (m.size > kMaxModuleSize || m.text_size > m.size || !m.layout_sane ||
                                     m.base + m.size < m.base))
        problems.push_back(fmt::format("module {} has an impossible layout (size {:#x}, text {:#x}, read-only end {:#x})",
                                       m.name, m.size, m.text_size, m.rodata.end ? m.rodata.end - m.base : 0));
      if (problems.size() > 8) break;
    }
  } catch (const std::exception& e) {
    problems.push_back(std::string("the module list is unreadable: ") + e.what());
  }
  return problems;
}

}  // namespace immortal::repair
