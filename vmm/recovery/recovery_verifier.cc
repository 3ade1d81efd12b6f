#include "recovery/recovery_verifier.h"

#include "base/error.h"
#include "kernel/lock_waiters.h"
#include "kernel/printk.h"

#include <fmt/format.h>

#include <set>

namespace immortal::vmm {

namespace {

// What the kernel's own detectors print (kernel/watchdog*.c, kernel/rcu/tree_stall.h,
// kernel/hung_task.c, kernel/workqueue.c).
constexpr const char* kDetectorReports[] = {
    "BUG: soft lockup",           "Watchdog detected hard LOCKUP", "detected stalls on CPUs/tasks",
    "self-detected stall on CPU", "blocked for more than",         "BUG: workqueue lockup",
    "rcu_preempt detected stall", "rcu_sched detected stall",
};
constexpr std::uint32_t kTaskDead = 0x80;            // TASK_DEAD (include/linux/sched.h)
constexpr std::uint32_t kExitZombie = 0x20, kExitDead = 0x10;

std::string printable(std::string s) {
  for (char& c : s)
    if (c < 0x20 || c > 0x7e) c = '?';
  return s;
}

}  // namespace

RecoveryVerifier::RecoveryVerifier(const Kernel& kernel, std::uint64_t killed_task, int killed_pid,
                                   std::chrono::milliseconds window)
    : killed_task_(killed_task), killed_pid_(killed_pid), started_(Clock::now()), ends_(Clock::now() + window) {
  try {
    KernelLog log = read_kernel_log(kernel);
    if (!log.records.empty()) log_seq_ = log.records.back().seq;
    log_known_ = true;
  } catch (const std::exception& e) {
    inconclusive_.push_back(std::string("kernel log: ") + e.what());
  }
  try {
    gp_seq_ = kernel.memory().read_u64(kernel.symbol("rcu_state") + kernel.types().offset_of("rcu_state", "gp_seq"));
    gp_since_ = Clock::now();
  } catch (const std::exception& e) {
    inconclusive_.push_back(std::string("RCU: ") + e.what());
  }
}

std::optional<HealthCheck> RecoveryVerifier::look_at_locks(const Kernel& kernel) {
  const auto& m = kernel.memory();
  const auto& t = kernel.types();
  LockWaiters w = find_lock_waiters(kernel);
  if (!w.problems.empty()) {
    inconclusive_.push_back("lock waiters: " + w.problems.front());
    return std::nullopt;
  }
  std::vector<std::string> problems;
  std::vector<std::uint64_t> live = all_tasks(kernel, 1 << 16, &problems);
  if (!problems.empty()) return std::nullopt;
  std::set<std::uint64_t> alive(live.begin(), live.end());
  std::map<std::pair<int, std::uint64_t>, int> now;
  for (const auto& waiter : w.waiters) {
    if (waiter.kind == SleepingLock::semaphore) continue;                     // no owner to judge
    if (waiter.kind == SleepingLock::rwsem && (waiter.owner & 1)) continue;  // readers: a hint only
    std::uint64_t owner = owner_task(waiter.owner);
    if (!owner) continue;  // being handed over
    std::string why;
    if (killed_task_ && owner == killed_task_) {
      why = fmt::format("the killed task (pid {})", killed_pid_);
    } else if (!alive.count(owner)) {
      why = fmt::format("a task that no longer exists ({:#x})", owner);
    } else {
      auto state = m.read_value<std::uint32_t>(owner + t.offset_of("task_struct", "__state"));
      auto exit_state = m.read_value<std::uint32_t>(owner + t.offset_of("task_struct", "exit_state"));
      if ((state & kTaskDead) || (exit_state & (kExitZombie | kExitDead)))
        why = fmt::format("a dead task (pid {})", m.read_value<std::int32_t>(owner + t.offset_of("task_struct", "pid")));
    }
    if (why.empty()) continue;
    auto key = std::make_pair(waiter.pid, waiter.lock);
    int seen = (suspects_.count(key) ? suspects_[key] : 0) + 1;
    now[key] = seen;
    if (seen >= 2)
      return HealthCheck{"locks", false,
                         fmt::format("pid {} ({}) waits in {} for the {} at {:#x}, owned by {}", waiter.pid,
                                     printable(waiter.comm), waiter.waits_in, to_string(waiter.kind), waiter.lock, why)};
  }
  suspects_ = std::move(now);
  return std::nullopt;
}

std::optional<HealthCheck> RecoveryVerifier::look_at_log(const Kernel& kernel) {
  if (!log_known_) return std::nullopt;
  KernelLog log = read_kernel_log(kernel);
  for (const auto& r : log.records) {
    if (r.seq <= log_seq_) continue;
    for (const char* report : kDetectorReports)
      if (r.text.find(report) != std::string::npos)
        return HealthCheck{"detectors", false, "the kernel reported: " + printable(r.text.substr(0, 200))};
  }
  return std::nullopt;
}

std::optional<HealthCheck> RecoveryVerifier::look_at_rcu(const Kernel& kernel) {
  if (!gp_seq_) return std::nullopt;
  std::uint64_t seq = kernel.memory().read_u64(kernel.symbol("rcu_state") + kernel.types().offset_of("rcu_state", "gp_seq"));
  if (seq != *gp_seq_) {
    gp_advanced_ = true;
    gp_seq_ = seq;
    gp_since_ = Clock::now();
    return std::nullopt;
  }
  // The low two bits are the grace period's state: non-zero while one is in progress.
  if ((seq & 3) && Clock::now() - gp_since_ >= kRcuStall)
    return HealthCheck{"rcu", false,
                       fmt::format("an RCU grace period has been in progress for {} s without completing",
                                   std::chrono::duration_cast<std::chrono::seconds>(Clock::now() - gp_since_).count())};
  return std::nullopt;
}

std::optional<HealthCheck> RecoveryVerifier::look(const Kernel& kernel) {
  ++looks_;
  // The guest runs while it is read: a walk can meet a task that is going away. Such a look
  // says nothing; the next one decides.
  for (auto check : {&RecoveryVerifier::look_at_locks, &RecoveryVerifier::look_at_log, &RecoveryVerifier::look_at_rcu}) {
    try {
      if (auto failed = (this->*check)(kernel)) return failed;
    } catch (const MemoryFault& e) {
      inconclusive_.push_back(e.what());
    } catch (const Error& e) {
      inconclusive_.push_back(e.what());
    }
  }
  return std::nullopt;
}

std::vector<HealthCheck> RecoveryVerifier::conclude(const Kernel& kernel) {
  std::vector<HealthCheck> out;
  auto n = looks_;
  out.push_back({"locks", true, fmt::format("no task waits on a lock of a dead owner ({} looks)", n)});
  out.push_back({"detectors", true, log_known_ ? "no lockup, stall or hung-task report" : "kernel log not readable"});
  out.push_back({"rcu", true, !gp_seq_ ? "RCU state not readable" : gp_advanced_ ? "grace periods advanced" : "no grace period was needed"});
  HealthCheck task{"task", true, "no task was killed"};
  if (killed_task_) {
    task.detail = fmt::format("the killed task (pid {}) exited", killed_pid_);
    try {
      const auto& m = kernel.memory();
      const auto& t = kernel.types();
      std::vector<std::string> problems;
      auto live = all_tasks(kernel, 1 << 16, &problems);
      bool present = std::find(live.begin(), live.end(), killed_task_) != live.end() &&
                     m.read_value<std::int32_t>(killed_task_ + t.offset_of("task_struct", "pid")) == killed_pid_;
      if (present) {
        auto exit_state = m.read_value<std::uint32_t>(killed_task_ + t.offset_of("task_struct", "exit_state"));
        auto state = m.read_value<std::uint32_t>(killed_task_ + t.offset_of("task_struct", "__state"));
        if (!(exit_state & (kExitZombie | kExitDead)) && !(state & kTaskDead)) {
          task.passed = false;
          task.detail = fmt::format("the killed task (pid {}) has not exited after {} s (state {:#x})", killed_pid_,
                                    std::chrono::duration_cast<std::chrono::seconds>(Clock::now() - started_).count(), state);
        } else {
          task.detail = fmt::format("the killed task (pid {}) is a zombie, waiting for its parent", killed_pid_);
        }
      }
    } catch (const std::exception& e) {
      task.detail = std::string("not checked: ") + e.what();
    }
  }
  out.push_back(task);
  std::stable_partition(out.begin(), out.end(), [](const HealthCheck& c) { return !c.passed; });
  return out;
}

nlohmann::json RecoveryVerifier::progress() const {
  return {{"looks", looks_},
          {"window_left_ms", std::max<std::int64_t>(0, std::chrono::duration_cast<std::chrono::milliseconds>(ends_ - Clock::now()).count())},
          {"inconclusive", inconclusive_.size()}};
}

}  // namespace immortal::vmm
