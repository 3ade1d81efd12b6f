#include "engine/crash_record.h"

#include "base/error.h"

#include <fmt/format.h>

namespace immortal::repair {

namespace {

constexpr const char* kNames[] = {"rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "rsp", "r8", "r9", "r10", "r11",
                                  "r12", "r13", "r14", "r15", "rip", "eflags", "cs", "ss", "ds", "es", "fs", "gs",
                                  "fs_base", "gs_base", "k_gs_base", "cr0", "cr2", "cr3", "cr4", "cr8", "efer"};

}  // namespace

std::uint64_t parse_hex(const nlohmann::json& value, const char* what) {
  if (!value.is_string()) fail(ExitCode::bad_input, "{}: not a hex string", what);
  const std::string& s = value.get_ref<const std::string&>();
  std::size_t start = s.rfind("0x", 0) == 0 ? 2 : 0;
  if (s.size() == start || s.size() - start > 16) fail(ExitCode::bad_input, "{}: bad hex value {:?}", what, s.substr(0, 40));
  std::uint64_t v = 0;
  for (std::size_t i = start; i < s.size(); ++i) {
    char c = s[i];
    int d = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
    if (d < 0) fail(ExitCode::bad_input, "{}: bad hex value {:?}", what, s.substr(0, 40));
    v = v << 4 | static_cast<std::uint64_t>(d);
  }
  return v;
}

nlohmann::json to_json(const X86Registers& r) {
  nlohmann::json j = nlohmann::json::object();
  for (const char* name : kNames) j[name] = fmt::format("{:#x}", *r.field(name));
  return j;
}

X86Registers registers_from_json(const nlohmann::json& j) {
  if (!j.is_object()) fail(ExitCode::bad_input, "registers: not an object");
  X86Registers r;
  for (const auto& [name, value] : j.items()) {
    std::uint64_t* field = r.field(name);
    if (!field) fail(ExitCode::bad_input, "registers: unknown register {:?}", name.substr(0, 20));
    *field = parse_hex(value, "a register");
  }
  return r;
}

CrashRecord crash_record_from_json(const nlohmann::json& j) {
  if (!j.is_object()) fail(ExitCode::bad_input, "crash record: not an object");
  CrashRecord c;
  auto text = [&](const char* key) {
    auto it = j.find(key);
    if (it == j.end() || !it->is_string()) fail(ExitCode::bad_input, "crash record: no {}", key);
    return it->get<std::string>().substr(0, 256);
  };
  c.time = text("time");
  c.caught_by = text("caught_by");
  c.intercepted_at = text("intercepted_at");
  if (!j.contains("id") || !j["id"].is_number_integer() || j["id"].get<std::int64_t>() < 0)
    fail(ExitCode::bad_input, "crash record: no id");
  c.id = j["id"].get<std::uint64_t>();
  if (!j.contains("vcpu") || !j["vcpu"].is_number_integer()) fail(ExitCode::bad_input, "crash record: no vcpu");
  std::int64_t vcpu = j["vcpu"].get<std::int64_t>();
  const auto& regs = j.contains("registers") ? j["registers"] : nlohmann::json();
  if (!regs.is_array() || regs.empty() || regs.size() > kMaxVcpus) fail(ExitCode::bad_input, "crash record: bad register list");
  if (vcpu < -1 || vcpu >= static_cast<std::int64_t>(regs.size())) fail(ExitCode::bad_input, "crash record: vCPU {} of {}", vcpu, regs.size());
  c.vcpu = static_cast<int>(vcpu);
  for (const auto& r : regs) c.registers.push_back(registers_from_json(r));
  return c;
}

nlohmann::json to_json(const CrashRecord& record) {
  nlohmann::json cpus = nlohmann::json::array();
  for (const auto& r : record.registers) cpus.push_back(to_json(r));
  return {{"id", record.id},         {"time", record.time}, {"caught_by", record.caught_by},
          {"intercepted_at", record.intercepted_at}, {"vcpu", record.vcpu}, {"registers", cpus}};
}

}  // namespace immortal::repair
