// The repair plan: what the engine proposes to do to a crashed guest so that it can resume —
// a bounded list of guest-memory writes and register changes on the crashing vCPU, each with its
// reason. The supervisor validates a plan before applying it (vmm/recovery/plan_validation.h)
// and logs it; a plan that does not resume means "write what is known, then reboot".
#pragma once

#include "engine/crash_analysis.h"
#include "engine/crash_record.h"
#include "kernel/kernel.h"

#include <nlohmann/json.hpp>

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

namespace immortal::repair {

struct MemoryWrite {
  std::uint64_t address = 0;            // kernel virtual address
  std::vector<std::uint8_t> expected;   // the bytes there now (checked again before writing)
  std::vector<std::uint8_t> bytes;      // the new bytes, same length
  bool code = false;                    // kernel or module text (written through the vCPU)
};

struct RegisterChange {
  std::string name;                     // X86Registers::field name
  std::uint64_t from = 0, to = 0;
};

// A kernel function the crashing vCPU runs on the supervisor's behalf before the plan's
// register changes take effect: it starts where the vCPU stopped, with these arguments, and
// returns to the interception point (a breakpoint), where the supervisor takes over again. The
// guest runs meanwhile. Used to release a sleeping lock the way its owner would, waking its
// waiters (mutex_unlock, up_write, up_read).
struct GuestCall {
  std::string function;
  std::uint64_t address = 0;            // of function
  std::vector<std::uint64_t> args;      // rdi, rsi, rdx
};

struct RepairAction {
  // kill-task, kill-sleeping-task, end-callback, complete-warning, resume-detector, release-lock,
  // release-reference, quarantine-function, pin-module, clear-taint, restore-code
  std::string kind;
  std::string reason;
  std::vector<MemoryWrite> writes;
  std::vector<RegisterChange> registers;  // on the crashing vCPU
  nlohmann::json detail = nlohmann::json::object();
  std::vector<GuestCall> calls;           // after the writes
};

struct RepairPlan {
  bool resume = false;
  std::string reason;                   // what the plan does, or why the guest must reboot
  int vcpu = -1;
  std::vector<RepairAction> actions;
  nlohmann::json to_json() const;
};

// The bytes placed at `address` (a function's start, after its endbr64 and ftrace site) that
// make it return at once as its callers expect: -EIO for integers and unknown types, 0 (NULL,
// false, IRQ_NONE, nothing) for pointers, bools, irqreturn_t, unsigned and void; then a jump to
// the kernel's return thunk when it has one (CONFIG_RETHUNK), else ret.
// With call_first, the patch first calls that function with the entry's own first argument and
// 0 (a NAPI poll's napi_complete_done(napi, 0)), then returns as above.
std::vector<std::uint8_t> quarantine_patch(ReturnType type, std::uint64_t address, std::optional<std::uint64_t> return_thunk,
                                           std::optional<std::uint64_t> call_first = std::nullopt);

struct PlanOptions {
  // --quarantine driver: every entry point of the driver, not only the one that crashed.
  bool quarantine_driver = false;
};
inline constexpr std::size_t kMaxQuarantinedFunctions = 48;

RepairPlan plan_repair(const Kernel& kernel, const CrashRecord& record, const CrashAnalysis& analysis,
                       const PlanOptions& options = {});

// A plan as it comes back from the repair agent (RepairPlan::to_json). Throws
// Error(ExitCode::bad_input) for anything malformed or beyond the parse limits below; what a
// plan may do is checked afterwards (vmm/recovery/plan_validation.h).
RepairPlan plan_from_json(const nlohmann::json& j);
inline constexpr std::size_t kMaxPlanActions = 64, kMaxActionWrites = 1024, kMaxWriteBytes = 64 * 1024,
                             kMaxActionCalls = 6, kMaxCallArgs = 3;

// "0f1f44" for {0x0f, 0x1f, 0x44}: how plans, quarantine records and logs show guest bytes.
std::string hex_bytes(const std::vector<std::uint8_t>& bytes);
std::vector<std::uint8_t> bytes_from_hex(const nlohmann::json& value, std::size_t max);


// Registers as they are just after the function of frame `target` returns to its caller,
// starting from `state`, the full registers of frame `from` (<= target). Callee-saved registers
// are restored from where each function's prologue pushed them, cross-checked against ORC's
// stack depth. Throws Error(ExitCode::bad_input) when a frame cannot be undone this way.
// restored_from, when given, receives for each register restored on the way the stack slot its
// value came from (the outermost frame's push wins, as it does for the value).
X86Registers return_from_frame(const Kernel& kernel, const Backtrace& backtrace, std::size_t from,
                               X86Registers state, std::size_t target,
                               std::map<std::string, std::uint64_t>* restored_from = nullptr);

}  // namespace immortal::repair
