// Analysis of a crash caught at its first instruction: what kind of crash, in which context,
// which task and which module's code caused it, which of that module's locks are held, and
// whether anything makes the guest unsafe to resume. Pure reading of guest memory.
#pragma once

#include "engine/crash_record.h"
#include "engine/held_locks.h"
#include "engine/held_references.h"
#include "engine/hung_tasks.h"
#include "engine/spin_wait.h"
#include "kernel/backtrace.h"
#include "kernel/kernel.h"

#include <nlohmann/json.hpp>

#include <optional>
#include <string>
#include <vector>

namespace immortal::repair {

// include/linux/preempt.h
constexpr std::uint32_t kPreemptMask = 0x000000ff, kSoftirqMask = 0x0000ff00, kHardirqMask = 0x000f0000,
                        kNmiMask = 0x00f00000, kSoftirqOffset = 0x100, kHardirqOffset = 0x10000, kNmiOffset = 0x100000,
                        kPreemptNeedResched = 0x80000000;
// include/linux/sched.h
constexpr std::uint32_t kPfExiting = 0x00000004, kPfKthread = 0x00200000;
constexpr std::uint64_t kThreadSize = 16 * 1024;  // x86-64 without KASAN
// The word at the lowest address of every task's stack (end_of_stack(): set_task_stack_end_magic()).
// schedule_debug() panics when a task that schedules has it overwritten: a dying task whose
// stack overflowed must get it back before it schedules for the last time.
constexpr std::uint64_t kStackEndMagic = 0x57AC6E9D;
constexpr std::uint64_t kGuardPage = 4096;  // below a VMAP_STACK stack: an overflow's stack pointer lies there

struct CrashAnalysis {
  // oops, bug, warn, panic (a panic() call by a module), stack-overflow (a task's stack ran into
  // its guard page), double-fault (any other double fault),
  // soft-lockup (the watchdog's timer interrupt caught a task spinning in a driver), hung-task
  // (khungtaskd found tasks asleep in D state too long), kernel-panic (by the kernel itself:
  // sysrq …), unknown
  std::string kind;
  // process, kernel-thread, softirq, hardirq, nmi, idle: of the code that crashed (for a soft
  // lockup, of the spinning code the watchdog's interrupt stopped)
  std::string context;
  std::string message;          // panic()'s message (its format string) or the warning's
  std::string oops_header;      // "BUG: kernel NULL pointer dereference, address: …" etc.
  std::string panic_caller;     // the function that called panic()
  int cpu = -1;
  std::uint64_t percpu_base = 0;
  std::uint32_t preempt_count = 0;
  // The part of preempt_count that is the interrupt which caught a lockup (HARDIRQ_OFFSET for
  // the soft-lockup watchdog's timer) or the double fault that caught a stack overflow
  // (NMI_OFFSET + HARDIRQ_OFFSET), not the code it stopped.
  std::uint32_t detector_levels = 0;
  // The task is asleep (a hung task's search): it holds no spinlock, whatever the lock calls its
  // frames reached say (the scheduler's own run-queue lock is another CPU's now).
  bool asleep = false;
  std::uint64_t task = 0;
  int pid = -1;
  std::string comm;
  std::uint32_t task_flags = 0;
  std::uint64_t task_stack = 0;

  Backtrace backtrace;          // of the crashing CPU, from the interception point
  // Index of the frame whose full registers are known (the faulting instruction of an
  // exception, the caller of panic() for a direct call, the spinning code a soft lockup's
  // timer interrupt stopped); -1 if none.
  int fault_frame = -1;
  X86Registers fault_registers; // the registers at that frame
  std::uint64_t fault_pc = 0;
  std::string fault_function;   // "immortal_fault_null_deref+0x5/0x10 [immortal_fault]"
  std::string module;           // the module whose code is to blame, "" if none
  // Its layout as the module list in memory has it (healthy_image.h's to_json), or null: the
  // supervisor bounds writes into a module the healthy copy does not know (or knows elsewhere)
  // by it, after checking it lies in the module area.
  nlohmann::json module_layout;
  bool fault_in_module = false; // the faulting instruction itself is module code
  // The module was (re)loaded after the profile was taken: its symbols there are stale or
  // missing, so nothing that needs them (quarantine, returning from its frames) is attempted.
  bool module_symbols_stale = false;
  bool fault_in_init = false;   // in the module's __init code (freed once it has loaded)
  // The kernel stopped on the driver's behalf (kernel_checks.h): which check, or "".
  std::string stopped_by;
  bool called_bad_pointer = false;  // the driver called a non-code address; blamed on its call
  bool corruption_reported = false; // "corruption" in the oops text
  std::string bug_at;               // "mm/slub.c:345!" from "kernel BUG at …
  int outer_module_frame = -1;  // the outermost module frame above fault_frame (its entry point)
  std::string outer_caller;     // the kernel function that called it (a dispatcher, vfs_write …)

  std::vector<HeldLock> locks;  // held locks the search found: those of the crash (ours) and others
  nlohmann::json lock_search = nlohmann::json::object();  // what the search looked at (held_locks.h)
  std::vector<HeldReference> references;  // kernel references the crashing path took (held_references.h)
  // A crashed NAPI poll: the napi_struct being polled (scheduled, its poll the driver's), found
  // among the crashing path's values.
  std::uint64_t napi = 0;
  // A hung task (khungtaskd's panic): the tasks it found hung, the culprits among them, and how
  // they and khungtaskd go on. The analysis's task is then the (first) culprit, not khungtaskd.
  HungTaskSearch hung;
  // A soft lockup of a task waiting for a spinlock (spin_wait.h): the lock, and who may hold it.
  std::optional<SpinWait> spin_wait;
  double lock_search_ms = 0;    // a timing, reported beside the analysis (not in to_json)
  std::vector<std::string> unsafe;  // reasons the guest must not be resumed (empty: none found)
  std::vector<std::string> notes;

  nlohmann::json to_json() const;
  nlohmann::json hung_json() const;
  std::string summary() const;  // one line for the operator
};

CrashAnalysis analyze_crash(const Kernel& kernel, const CrashRecord& record);

// include/linux/netdevice.h: NAPI_STATE_SCHED is bit 0 of napi_struct.state.
inline constexpr std::uint64_t kNapiStateSched = 1;

// Guest text (comm, messages, log lines) as printable ASCII: other bytes become '?', so reports
// and JSON never carry what the guest wrote raw.
std::string printable(std::string_view text);

// Helpers shared with the planner.
std::uint64_t percpu_base(const Kernel& kernel, const X86Registers& registers, int vcpu);
X86Registers read_pt_regs(const Kernel& kernel, std::uint64_t address);

}  // namespace immortal::repair
