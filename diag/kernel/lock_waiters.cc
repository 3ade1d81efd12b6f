#include "kernel/lock_waiters.h"

#include "base/error.h"
#include "kernel/list_walk.h"

#include <fmt/format.h>

#include <array>
#include <unordered_set>

namespace immortal {

namespace {

constexpr std::uint64_t kWaiterThreadSize = 16 * 1024;
constexpr std::size_t kMaxWaitList = 4096;
constexpr std::uint32_t kTaskInterruptible = 0x1, kTaskUninterruptible = 0x2;

struct SlowPath {
  const char* function;
  SleepingLock kind;
};
// kernel/locking/: where a task sleeps while it waits for each kind of lock.
constexpr SlowPath kSlowPaths[] = {
    {"__mutex_lock", SleepingLock::mutex},          {"__ww_mutex_lock", SleepingLock::mutex},
    {"mutex_lock_interruptible_slowpath", SleepingLock::mutex},
    {"mutex_lock_killable_slowpath", SleepingLock::mutex}, {"__mutex_lock_slowpath", SleepingLock::mutex},
    {"rwsem_down_read_slowpath", SleepingLock::rwsem}, {"rwsem_down_write_slowpath", SleepingLock::rwsem},
    {"__down_common", SleepingLock::semaphore},     {"__down", SleepingLock::semaphore},
    {"__down_interruptible", SleepingLock::semaphore}, {"__down_killable", SleepingLock::semaphore},
    {"__down_timeout", SleepingLock::semaphore},
};

bool aligned_kernel_address(std::uint64_t v) { return v >= kKernelSpaceStart && (v & 7) == 0; }

}  // namespace

const char* to_string(SleepingLock kind) {
  switch (kind) {
    case SleepingLock::mutex: return "mutex";
    case SleepingLock::rwsem: return "rwsem";
    case SleepingLock::semaphore: return "semaphore";
  }
  return "?";
}

std::vector<std::uint64_t> all_tasks(const Kernel& kernel, std::size_t max, std::vector<std::string>* problems) {
  const auto& t = kernel.types();
  const auto& m = kernel.memory();
  std::uint64_t init_task = kernel.symbol("init_task");
  std::uint64_t tasks = t.offset_of("task_struct", "tasks");
  std::uint64_t signal = t.offset_of("task_struct", "signal");
  std::uint64_t thread_node = t.offset_of("task_struct", "thread_node");
  std::uint64_t thread_head = t.offset_of("signal_struct", "thread_head");
  std::vector<std::uint64_t> leaders{init_task};
  WalkResult w = walk_list(m, init_task + tasks, max, [&](std::uint64_t node) { leaders.push_back(node - tasks); });
  if (!w.complete && problems) problems->push_back("the task list: " + w.problem);
  std::vector<std::uint64_t> out;
  std::unordered_set<std::uint64_t> seen;
  for (std::uint64_t leader : leaders) {
    if (out.size() >= max) break;
    if (seen.insert(leader).second) out.push_back(leader);
    try {
      std::uint64_t sig = m.read_u64(leader + signal);
      if (!aligned_kernel_address(sig)) continue;
      WalkResult threads = walk_list(m, sig + thread_head, max, [&](std::uint64_t node) {
        std::uint64_t task = node - thread_node;
        if (out.size() < max && seen.insert(task).second) out.push_back(task);
      });
      if (!threads.complete && problems)
        problems->push_back(fmt::format("the threads of task {:#x}: {}", leader, threads.problem));
    } catch (const MemoryFault& e) {
      if (problems) problems->push_back(fmt::format("task {:#x}: {}", leader, e.what()));
    }
  }
  return out;
}

LockWaiters find_lock_waiters(const Kernel& kernel, std::size_t max_tasks) {
  LockWaiters out;
  const auto& t = kernel.types();
  const auto& m = kernel.memory();
  const auto& symbols = kernel.symbols();
  std::uint64_t off_state = t.offset_of("task_struct", "__state");
  std::uint64_t off_on_cpu = t.offset_of("task_struct", "on_cpu");
  std::uint64_t off_stack = t.offset_of("task_struct", "stack");
  std::uint64_t off_sp = t.offset_of("task_struct", "thread.sp");
  std::uint64_t off_pid = t.offset_of("task_struct", "pid");
  std::uint64_t off_comm = t.offset_of("task_struct", "comm");
  const std::array<std::uint64_t, 3> wait_list = {t.offset_of("mutex", "wait_list"), t.offset_of("rw_semaphore", "wait_list"),
                                                  t.offset_of("semaphore", "wait_list")};
  const std::uint64_t mutex_owner = t.offset_of("mutex", "owner"), rwsem_owner = t.offset_of("rw_semaphore", "owner");

  // Is node a waiter's list node, i.e. followed by a task pointer and lying on that task's stack?
  auto on_own_stack = [&](std::uint64_t node) {
    std::uint64_t task = m.read_u64(node + 16);
    if (!aligned_kernel_address(task)) return false;
    std::uint64_t stack = m.read_u64(task + off_stack);
    return aligned_kernel_address(stack) && node >= stack && node - stack < kWaiterThreadSize;
  };

  for (std::uint64_t task : all_tasks(kernel, max_tasks, &out.problems)) {
    ++out.tasks;
    try {
      auto state = m.read_value<std::uint32_t>(task + off_state);
      if (!(state & (kTaskInterruptible | kTaskUninterruptible)) || m.read_value<std::int32_t>(task + off_on_cpu)) continue;
      std::uint64_t stack = m.read_u64(task + off_stack), sp = m.read_u64(task + off_sp);
      if (!aligned_kernel_address(stack) || sp < stack || sp >= stack + kWaiterThreadSize) continue;
      std::vector<std::uint64_t> words((stack + kWaiterThreadSize - sp) / 8);
      m.read(sp, std::as_writable_bytes(std::span(words)));
      // The slow path it sleeps in: the first lock slow path among the return addresses.
      const SlowPath* path = nullptr;
      for (std::size_t i = 0; i < words.size() && !path; ++i) {
        if (!symbols.is_text(words[i])) continue;
        auto s = symbols.lookup(words[i] - 1);
        if (!s || !s->module().empty()) continue;
        std::string name = base_function_name(s->name());
        for (const auto& p : kSlowPaths)
          if (name == p.function) path = &p;
      }
      if (!path) continue;
      // Its waiter: {list.next, list.prev, task} with the ring's neighbours pointing back.
      for (std::size_t i = 2; i < words.size(); ++i) {
        if (words[i] != task || !aligned_kernel_address(words[i - 2]) || !aligned_kernel_address(words[i - 1])) continue;
        std::uint64_t node = sp + 8 * (i - 2);
        if (m.read_u64(words[i - 2] + 8) != node || m.read_u64(words[i - 1]) != node) continue;
        // Around the ring to the one node that is not a waiter: the lock's wait_list.
        std::uint64_t head = 0, at = words[i - 2];
        for (std::size_t n = 0; n < kMaxWaitList && at != node; ++n) {
          if (!aligned_kernel_address(at)) break;
          if (!on_own_stack(at)) {
            head = at;
            break;
          }
          at = m.read_u64(at);
        }
        if (!head) {
          out.problems.push_back(fmt::format("pid {}: its wait list has no lock at its head",
                                             m.read_value<std::int32_t>(task + off_pid)));
          break;
        }
        LockWaiter w;
        w.task = task;
        w.pid = m.read_value<std::int32_t>(task + off_pid);
        w.comm = m.read_cstring(task + off_comm, 16);
        for (char& c : w.comm)
          if (c < 0x20 || c > 0x7e) c = '?';
        w.kind = path->kind;
        w.waits_in = path->function;
        w.lock = head - wait_list[static_cast<std::size_t>(path->kind)];
        if (w.kind == SleepingLock::mutex) w.owner = m.read_u64(w.lock + mutex_owner);
        if (w.kind == SleepingLock::rwsem) w.owner = m.read_u64(w.lock + rwsem_owner);
        out.waiters.push_back(std::move(w));
        break;
      }
    } catch (const MemoryFault& e) {
      out.problems.push_back(fmt::format("task {:#x}: {}", task, e.what()));
    }
  }
  return out;
}

}  // namespace immortal
