// A task stuck waiting for a spinlock (docs/recovery.md, "A task spinning on a spinlock"): the
// soft-lockup watchdog stopped it in the kernel's spinlock slow path, called by a driver. Ending
// it there is safe only if it holds no place in the lock's queue, and the guest may go on only if
// the lock it waits for has a holder we can name.
//
// - The lock: the one word the stopped loop polls (every memory access of the loop through the
//   stopped instruction goes to one register + displacement that the loop does not change).
// - Its place: the lock word says who waits (qspinlock: locked byte, pending bit, queue tail);
//   with only the locked byte set nobody is pending or queued, the stuck task included, and its
//   CPU's MCS nodes are unused (it has not begun to queue).
// - The holder: a spinlock is held by code that runs with preemption disabled. Every other CPU's
//   preemption level is read (the count's low byte: interrupt levels alone hold no lock); the
//   kernel log names each task that went to sleep holding one
//   ("BUG: scheduling while atomic") or died holding one ("exited with preempt_count").
#pragma once

#include "engine/crash_record.h"
#include "kernel/kernel.h"

#include <nlohmann/json.hpp>

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace immortal::repair {

struct CrashAnalysis;

struct SpinWait {
  std::uint64_t lock = 0;     // the spinlock_t the task waits for
  std::uint32_t word = 0;     // its lock word when the guest stopped
  std::string polled_by;      // "native_queued_spin_lock_slowpath polls (%rbx)"
  // Other CPUs: none runs with preemption disabled (they hold no spinlock), or why not.
  bool others_clear = false;
  std::string others;
  // Tasks the kernel reported going to sleep or dying while holding a spinlock (their pids);
  // not known when the log has lost records and the kernel's taint says such a report was made.
  std::optional<std::vector<int>> left_holding;
  std::string log_evidence;   // where left_holding comes from
  nlohmann::json to_json() const;
};

// The lock a soft lockup's stuck task waits for, when the watchdog stopped it in the spinlock
// slow path (`function`) with no place in the lock's queue; otherwise nullopt and *why says why
// ending it there would not be safe.
std::optional<SpinWait> find_spin_wait(const Kernel& kernel, const CrashRecord& record, const CrashAnalysis& a,
                                       const std::string& function, std::string* why);

// Who holds the lock: the crashing task (the levels its preemption count has that no lock or
// section on its stack explains, `unexplained_levels`: one means its CPU still holds a spinlock
// taken earlier; none and a report that the task slept holding one mean it took the lock and
// slept), or nobody we can name. The result is what releasing it takes off the count (1 or 0);
// nullopt with *why otherwise.
std::optional<std::uint32_t> spin_wait_holder(const SpinWait& wait, int pid, std::uint32_t unexplained_levels,
                                              std::string* why);

// The kernel's spinlock slow paths (qspinlock), and the spinlock functions that call them (those
// of lock_calls.h's table).
bool spinlock_slow_path(const std::string& function);
bool spinlock_entry(const std::string& function);

// The pids in one log line of "BUG: scheduling while atomic: comm/pid/0x…" or
// "note: comm[pid] exited with preempt_count n"; nullopt for other lines.
std::optional<int> left_holding_pid(const std::string& line);

// qspinlock (include/asm-generic/qspinlock_types.h): the locked byte; pending and tail above it.
inline constexpr std::uint32_t kQspinLockedMask = 0xff;

}  // namespace immortal::repair
