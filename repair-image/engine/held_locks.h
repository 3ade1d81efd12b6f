// Every lock a crash left held, wherever it lives (docs/recovery.md, "Finding held locks"):
//
// - sleeping locks by their owner word: a mutex's and an rwsem's owner is the owning task, so
//   the words equal to the dying task are searched in the objects the crashing code was working
//   on (the registers and stack slots of every frame from the fault up to the kernel entry or
//   the callback's dispatcher, each pointer's whole slab object, and the objects those point
//   to), the task's stack, every module's data and the kernel's .data;
// - locks by their call sites: each function on the crashing stack is read for calls to lock
//   functions before the point it has reached, and the frame's registers give the address the
//   call was made with (this is how spinlocks and rwlocks, which have no owner, are found, and
//   how a mutex is told from an rwsem);
// - the waiters' own stacks (kernel/lock_waiters.h): a task asleep on a lock names it, and the
//   lock's owner word says whose it is.
//
// A spinlock's holder is the CPU whose preemption count it raised: the spinlocks and rwlocks
// found must add up to the crashing CPU's count exactly. What cannot be accounted for — a count
// that does not add up, a held semaphore taken on the crashing path (semaphores have no owner),
// a lock whose kind cannot be told — is a reason not to resume.
#pragma once

#include "engine/lock_calls.h"
#include "kernel/kernel.h"

#include <nlohmann/json.hpp>

#include <cstdint>
#include <string>
#include <vector>

namespace immortal::repair {

struct CrashAnalysis;

struct HeldLock {
  std::uint64_t address = 0;    // the lock (struct mutex, rw_semaphore, spinlock_t, rwlock_t, semaphore; a socket's struct sock)
  LockType type = LockType::spinlock;
  bool read = false;            // rwlock, rwsem: held for reading
  std::uint64_t word = 0;       // mutex, rwsem: the owner word; spinlock, rwlock: the lock word; semaphore: its count; socket: sk_lock.owned
  std::uint64_t count = 0;      // rwsem: its count word
  std::string name;             // "rtnl_mutex", "kmalloc-512 object+0x40", …
  std::string found_by;         // how the search came to it
  std::vector<int> waiters;     // pids asleep on it
  std::uint32_t preempt_delta = 0;  // spinlock, rwlock: what taking it added to the preemption count
  bool ours = false;            // held by the crashing task or CPU: the repair releases it
  std::string note;
  nlohmann::json to_json() const;
};

struct LockSearch {
  std::vector<HeldLock> locks;
  std::vector<std::string> unexplained;  // each one is a reason not to resume
  std::vector<std::string> notes;
  nlohmann::json stats = nlohmann::json::object();  // what was searched, and how long it took
  std::vector<std::uint64_t> path_values;  // the data pointers of the crashing path (registers, stack slots)
  double ms = 0;  // how long the search took (a timing: not part of the analysis both engines agree on)
};

// The analysis must have its context, task, preemption count, backtrace and fault frame.
LockSearch find_held_locks(const Kernel& kernel, const CrashAnalysis& analysis);

// rw_semaphore count bits (kernel/locking/rwsem.c).
inline constexpr std::uint64_t kRwsemWriterLocked = 1, kRwsemFlagWaiters = 2, kRwsemReaderBias = 0x100,
                               kRwsemReaderOwned = 1;
// qrwlock (include/asm-generic/qrwlock.h).
inline constexpr std::uint32_t kQrwWriteLocked = 0xff, kQrwReaderBias = 0x200;

}  // namespace immortal::repair
