// Tasks asleep on a sleeping lock (mutex, rw_semaphore, semaphore), found from the waiters' own
// stacks: a task blocked in mutex_lock() keeps a `struct mutex_waiter` (list node, then its own
// task pointer) on its stack, linked into the lock's wait_list; following that ring to the node
// that is not on any task's stack gives the lock. Which kind of lock is told by the slow-path
// function on the waiter's stack. Used by the repair engine (who waits on what the crash left
// held) and by the supervisor's check of a recovered guest (nobody may wait on a dead owner).
// Bounded and cycle-safe: guest memory is untrusted.
#pragma once

#include "kernel/kernel.h"

#include <cstdint>
#include <string>
#include <vector>

namespace immortal {

enum class SleepingLock { mutex, rwsem, semaphore };
const char* to_string(SleepingLock kind);

struct LockWaiter {
  std::uint64_t task = 0;
  int pid = 0;
  std::string comm;            // printable
  std::uint64_t lock = 0;      // the struct mutex / rw_semaphore / semaphore
  SleepingLock kind = SleepingLock::mutex;
  std::string waits_in;        // the slow-path function ("__mutex_lock", "rwsem_down_write_slowpath", …)
  std::uint64_t owner = 0;     // mutex, rwsem: the owner word (task pointer | flag bits); semaphore: 0
};

struct LockWaiters {
  std::vector<LockWaiter> waiters;
  std::size_t tasks = 0;       // tasks looked at
  std::vector<std::string> problems;  // what could not be read (the search went on)
};

LockWaiters find_lock_waiters(const Kernel& kernel, std::size_t max_tasks = 1 << 16);

// Every task: the thread-group leaders of the task list and their threads. Bounded, cycle-safe;
// problems says where a walk stopped early.
std::vector<std::uint64_t> all_tasks(const Kernel& kernel, std::size_t max, std::vector<std::string>* problems);

// The owner task of a mutex or rwsem owner word (flag bits cleared).
inline std::uint64_t owner_task(std::uint64_t owner_word) { return owner_word & ~std::uint64_t{7}; }

}  // namespace immortal
