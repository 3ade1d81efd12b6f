// Hung tasks a driver caused (docs/recovery.md, "Hung tasks"): with kernel.hung_task_panic=1,
// khungtaskd panics once a task has slept in uninterruptible state (D) for
// hung_task_timeout_secs without being scheduled. The culprit is not khungtaskd but the task
// asleep in a driver's code; the others it reported wait on a lock that task holds, or the guest
// is not understood.
//
// A culprit is ended from its own context the next time it runs: schedule()'s return is pointed
// at the end of oops_end() (`mov %ebp,%edi; call rewind_stack_and_make_dead` in Linux 6.1, with
// the register that instruction reads set to SIGKILL where schedule() restores it from), the
// objects its abandoned frames linked into the kernel's lists (wait-queue entries, a
// schedule_timeout() timer, an hrtimer sleeper) are unlinked by the kernel's own functions,
// its locks are released, and it is woken. khungtaskd goes on as if hung_task_panic were 0.
#pragma once

#include "engine/held_locks.h"
#include "kernel/backtrace.h"
#include "kernel/kernel.h"
#include "x86_64/registers.h"

#include <nlohmann/json.hpp>

#include <cstdint>
#include <string>
#include <vector>

namespace immortal::repair {

struct CrashAnalysis;

// An object on a hung task's stack, in a frame it will never return to, that is linked into a
// kernel structure: it must be unlinked before the stack is reused.
struct StackLink {
  std::string kind;             // wait-queue entry, simple wait-queue entry, timer, hrtimer
  std::uint64_t object = 0;     // on the stack
  std::uint64_t queue = 0;      // the wait-queue head it is on (wait-queue entries), else 0
  std::string release;          // remove_wait_queue(queue, object), finish_swait(queue, object),
                                // del_timer(object) (timer_delete), hrtimer_cancel(object)
  nlohmann::json to_json() const;
};

struct HungTask {
  std::uint64_t task = 0;
  int pid = -1;
  std::string comm;
  std::uint64_t stack = 0;
  bool culprit = false;          // asleep in a driver's code (else: waits on a culprit's lock)
  std::string waits_on;          // a victim: the lock it waits for
  Backtrace backtrace;           // from where it sleeps (__schedule)
  X86Registers sleep_registers;  // callee-saved, rip and rsp as the switch saved them
  int schedule_frame = -1;       // the frame of schedule()
  int module_frame = -1;         // the first frame of the driver's code
  int entry_frame = -1;          // the outermost frame of that module (its entry point)
  std::string module;
  std::string function;          // where in the driver it sleeps
  std::string entry_caller;      // the kernel function that called the driver's entry point
  std::uint64_t return_slot = 0, return_address = 0;  // schedule()'s return address, and where
  std::uint64_t signal_slot = 0, signal_slot_value = 0;  // where the continuation's register comes back from
  std::vector<StackLink> links;
  std::vector<HeldLock> locks;   // what it holds (owner words, lock calls on its stack)
  nlohmann::json to_json() const;
};

struct HungTaskSearch {
  std::vector<HungTask> tasks;
  std::uint64_t continuation = 0;       // oops_end's `mov %reg,%edi` before rewind_stack_and_make_dead
  std::string continuation_register;    // that reg
  std::uint64_t detector_resume = 0;    // where khungtaskd's loop goes on without the panic
  std::uint64_t detector_rsp = 0;       // its stack pointer there
  std::vector<std::string> unsafe;
  std::vector<std::string> notes;
};

// The hung tasks of a crash that panic() reached from khungtaskd (the analysis must have the
// crashing CPU's registers and backtrace).
HungTaskSearch find_hung_tasks(const Kernel& kernel, const CrashAnalysis& analysis, const X86Registers& registers);

// Where oops_end() kills a task: the `mov %e<reg>,%edi` just before its call of
// rewind_stack_and_make_dead, and that register's name (callee-saved), or {0, ""}.
std::pair<std::uint64_t, std::string> kill_continuation(const Kernel& kernel);

inline constexpr std::uint32_t kTaskUninterruptible = 0x2;
// include/linux/sched.h: TASK_PARKED, a state only kthread_unpark() wakes (for kernel threads):
// a culprit parked in it is woken by nothing but the repair's own wake_up_state().
inline constexpr std::uint32_t kTaskParked = 0x40;
inline constexpr std::size_t kMaxHungCulprits = 4;
inline constexpr std::size_t kMaxHungTasks = 64;  // culprits and victims

}  // namespace immortal::repair
