// Whether a resumed guest really recovered (docs/recovery.md, "Verification"): for a window
// after the resume (--verify-window, 10 s by default) the supervisor looks at the running guest
// about once a second, from its memory, with the same bounded readers as everywhere else:
//
//   locks       no task waits on a mutex or rwsem whose owner is the killed task, or a task that
//               is gone or dead (seen twice in a row: the guest runs while it is read)
//   detectors   the kernel log gets no soft- or hard-lockup, RCU stall, hung-task or workqueue
//               lockup report after the resume
//   rcu         RCU grace periods advance: none stays in progress for RCU_STALL_SECONDS
//   task        the killed task exited (it is gone, or a zombie) by the end of the window
//
// The agent's part (a heartbeat after the resume and a new process) is checked by the
// supervisor and reported here. A failed check ends the window at once.
#pragma once

#include "base/io.h"
#include "kernel/kernel.h"

#include <nlohmann/json.hpp>

#include <chrono>
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

namespace immortal::vmm {

struct HealthCheck {
  std::string name;     // locks, detectors, rcu, task, agent
  bool passed = false;
  std::string detail;
};

class RecoveryVerifier {
 public:
  static constexpr std::chrono::seconds kRcuStall{5};

  // killed_task / killed_pid: the task the repair killed (0 / -1 if none). Reads the guest's
  // starting point (the last kernel log record, RCU's grace-period sequence); kernel is live.
  RecoveryVerifier(const Kernel& kernel, std::uint64_t killed_task, int killed_pid, std::chrono::milliseconds window);

  // Looks at the running guest now. Returns the check that failed, if one did.
  std::optional<HealthCheck> look(const Kernel& kernel);
  bool window_over() const { return Clock::now() >= ends_; }
  // The checks once the window is over and look() found nothing wrong (the end-of-window ones
  // included); a failed one first if any.
  std::vector<HealthCheck> conclude(const Kernel& kernel);
  nlohmann::json progress() const;  // for status: what has been looked at so far

 private:
  std::optional<HealthCheck> look_at_locks(const Kernel& kernel);
  std::optional<HealthCheck> look_at_log(const Kernel& kernel);
  std::optional<HealthCheck> look_at_rcu(const Kernel& kernel);

  std::uint64_t killed_task_ = 0;
  int killed_pid_ = -1;
  Clock::time_point started_{}, ends_{};
  std::uint64_t log_seq_ = 0;          // the last kernel log record before the resume
  bool log_known_ = false;
  std::optional<std::uint64_t> gp_seq_;  // RCU grace-period sequence and since when it is unchanged
  Clock::time_point gp_since_{};
  bool gp_advanced_ = false;
  std::map<std::pair<int, std::uint64_t>, int> suspects_;  // (waiter pid, lock) → looks in a row
  std::size_t looks_ = 0;
  std::vector<std::string> inconclusive_;  // looks that could not read something (racing the guest)
};

}  // namespace immortal::vmm
