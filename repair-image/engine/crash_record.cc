#include "engine/crash_record.h"

#include <fmt/format.h>

namespace immortal::repair {

nlohmann::json to_json(const X86Registers& r) {
  nlohmann::json j = nlohmann::json::object();
  for (const char* name : {"rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "rsp", "r8", "r9", "r10", "r11", "r12",
                           "r13", "r14", "r15", "rip", "eflags", "cs", "ss", "fs_base", "gs_base", "cr2", "cr3"})
    j[name] = fmt::format("{:#x}", *r.field(name));
  return j;
}

nlohmann::json to_json(const CrashRecord& record) {
  nlohmann::json cpus = nlohmann::json::array();
  for (const auto& r : record.registers) cpus.push_back(to_json(r));
  return {{"id", record.id},         {"time", record.time}, {"caught_by", record.caught_by},
          {"intercepted_at", record.intercepted_at}, {"vcpu", record.vcpu}, {"registers", cpus}};
}

}  // namespace immortal::repair
