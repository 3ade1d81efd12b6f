// What the operator allows recovery to do: which crash kinds it may repair, how many repairs in
// a time window before the guest is rebooted instead (a driver that crashes again and again is
// better served by a reboot), and the time limits of verification and hang detection.
#pragma once

#include "base/io.h"

#include <chrono>
#include <deque>
#include <set>
#include <string>

namespace immortal::vmm {

struct RecoveryPolicy {
  bool enabled = true;
  bool reboot_when_off = false;                   // recovery off: reboot a crashed guest (after its bundle), not freeze it
  std::set<std::string> disabled_kinds;           // analysis kinds: oops bug warn panic
  unsigned max_recoveries = 20;                   // in `window`
  std::chrono::seconds window{600};
  std::chrono::milliseconds verify_timeout{20'000};  // heartbeat + health probe after resume
  std::chrono::milliseconds verify_window{10'000};   // the guest watched after resume (recovery_verifier.h)
  bool quarantine_driver = false;                    // --quarantine driver: all its entry points
  std::chrono::milliseconds hang_timeout{30'000};    // no heartbeat while running: a hang
  std::chrono::milliseconds boot_timeout{60'000};    // a reboot's new hello, else reset again (with back-off)

  // "N/SECONDS", e.g. "20/600". Throws Error(ExitCode::usage).
  void set_limit(const std::string& text);
  // Kinds a policy may name (the analysis's crash kinds that can be recovered).
  static const std::set<std::string>& recoverable_kinds();
};

// Counts recoveries in the sliding window.
class RecoveryBudget {
 public:
  explicit RecoveryBudget(const RecoveryPolicy& policy) : policy_(policy) {}
  bool available(Clock::time_point now);
  void spend(Clock::time_point now) { used_.push_back(now); }
  std::size_t used(Clock::time_point now);

 private:
  const RecoveryPolicy& policy_;
  std::deque<Clock::time_point> used_;
};

}  // namespace immortal::vmm
