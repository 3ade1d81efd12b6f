// The ways out of a crashed boot, each leaving the same trace (an event, the crash's outcome
// in the ledger, its bundle written, the agent's pending requests failed): a reboot by us, the
// guest's own kdump when the operator armed one, and a reset the guest did itself. Then the
// wait for the new boot's hello, after which everything is armed afresh from its profile.
#pragma once

#include "recovery/arming.h"
#include "recovery/crash_interceptor.h"
#include "recovery/recovery_parts.h"

#include "base/clock.h"

#include <optional>
#include <string>

namespace immortal::vmm {

class GuestReboot {
 public:
  GuestReboot(RecoveryParts& parts, CrashInterceptor& interceptor, Arming& arming)
      : p_(parts), interceptor_(interceptor), arming_(arming) {}

  void reboot(const std::string& reason, std::uint64_t crash);
  // Whether the guest has a crash kernel loaded (kdump armed).
  bool guest_has_kdump();
  // Lets panic() go on into the guest's kdump (falls back to a reboot when it cannot).
  void hand_to_guest_kdump(const std::string& reason, std::uint64_t crash);
  // A reset the guest did itself (a reboot inside it, a triple fault); ours are ignored.
  void on_reset(const std::string& detail);
  // While rebooting: the new boot's hello ends it; no hello in time means a failed boot.
  void tick();
  // The boot after a reset failed (it crashed, or no hello came in time): the guest is reset
  // again after a back-off (1, 2, 4 … 60 s), never left stuck.
  void boot_failed(const std::string& why);

 private:
  void leave_boot(const char* event_name, const std::string& outcome, const std::string& reason, std::uint64_t crash,
                  const char* to_clients);
  void forget_boot();
  // Pause, disarm, reset, resume; the boot deadline starts.
  void reset_guest(const char* why);

  int attempts_ = 0;  // failed boots in a row
  std::optional<Clock::time_point> boot_deadline_, retry_at_;
  std::chrono::milliseconds boot_wait_{0};  // how long the current boot may take

  RecoveryParts& p_;
  CrashInterceptor& interceptor_;
  Arming& arming_;
  std::string old_boot_id_;  // while rebooting: the boot that crashed
};

}  // namespace immortal::vmm
