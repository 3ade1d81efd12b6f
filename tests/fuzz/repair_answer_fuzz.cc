// Fuzz target: a repair agent's answer as the supervisor takes it (vmm/repair/repair_answer.cc).
// The agent read a crashed, possibly hostile guest and may itself be subverted: whatever it
// writes, read_repair_answer must return (never throw), and what it accepts must hold together —
// an answer that is ok has an analysis object, one that is not has a reason.
#include "repair/repair_engine.h"

#include <cmath>
#include <cstdint>
#include <string>

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using namespace immortal;
  std::string text(reinterpret_cast<const char*>(data), size);
  vmm::RepairAnswer answer;
  bool taken = vmm::read_repair_answer(text, "vm", answer);
  if (taken && answer.ok && !answer.analysis.is_object()) __builtin_trap();
  if (taken && !answer.ok && answer.error.empty()) __builtin_trap();
  if (!taken && answer.fallbacks.empty()) __builtin_trap();
  if (!std::isfinite(answer.engine_ms) || answer.engine_ms < 0) __builtin_trap();
  if (answer.process_pid < 0) __builtin_trap();
  (void)answer.to_json().dump();
  return 0;
}
