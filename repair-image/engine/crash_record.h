// What the supervisor knows at the moment it stopped a crashing guest, before any analysis:
// which vCPU, how it was caught, every vCPU's registers. The repair engine works from this and
// the guest's memory only (so it can run in the repair VM of issue 7 as well as in-process).
#pragma once

#include "x86_64/registers.h"

#include <nlohmann/json.hpp>

#include <cstdint>
#include <string>
#include <vector>

namespace immortal::repair {

struct CrashRecord {
  std::uint64_t id = 0;            // per instance, counting from 1
  std::string time;                // UTC, ISO 8601 with milliseconds
  // How it was caught: "breakpoint" (the first instruction of a crash path), "pvpanic" (the
  // guest's panic notifier: too late to resume), "hang" (agent heartbeats stopped).
  std::string caught_by;
  std::string intercepted_at;      // the symbol of the breakpoint, for "breakpoint"
  int vcpu = -1;                   // the crashing vCPU (-1 when unknown)
  std::vector<X86Registers> registers;  // every vCPU, index = vCPU
};

nlohmann::json to_json(const X86Registers& r);
nlohmann::json to_json(const CrashRecord& record);
// The reverse, for records that crossed to the repair agent. Throws Error(ExitCode::bad_input)
// for anything malformed (names, hex values, more than kMaxVcpus vCPUs).
X86Registers registers_from_json(const nlohmann::json& j);
CrashRecord crash_record_from_json(const nlohmann::json& j);
inline constexpr std::size_t kMaxVcpus = 1024;

// "0x1f" -> 31; throws Error(ExitCode::bad_input) naming what for.
std::uint64_t parse_hex(const nlohmann::json& value, const char* what);

}  // namespace immortal::repair
