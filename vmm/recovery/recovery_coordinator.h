// The recovery room (docs/recovery.md): everything from a crash caught to the guest proven
// healthy again, or rebooted. Machine events that mean a crash (a breakpoint at a crash path,
// pvpanic, a reset) come in through on_event(); the loop's tick() does what waits for time (the
// verification window, hang detection, freezing a pvpanic-caught guest, the rebooted guest's
// hello). One crash, in order:
//
//   breakpoint → record (all vCPUs) → repair engine (repair/repair_broker.h) → decision
//   (crash_decision.h) → bundle copy held (crash_bundles.h) → plan applied, guest resumed
//   → watch (recovery_watch.h) → verified → ledger and bundle outcome
//
// Anything that fails on the way reboots the guest (or hands it to its own kdump) with a bundle.
#pragma once

#include "engine/text_precheck.h"
#include "recovery/arming.h"
#include "recovery/crash_interceptor.h"
#include "recovery/guest_reboot.h"
#include "recovery/recovery_parts.h"
#include "recovery/recovery_watch.h"

#include <functional>
#include <future>
#include <memory>
#include <optional>
#include <string>

namespace immortal::vmm {

class RecoveryCoordinator {
 public:
  explicit RecoveryCoordinator(RecoveryParts parts);

  void on_event(const MachineEvent& event);
  void tick();
  // Taking over a VM from an earlier supervisor (the machine paused): its breakpoints, and a crash
  // that stopped at one of them while nobody was attached — frozen there, it gets a bundle and a
  // reboot. Returns whether there was one.
  bool take_over(std::map<std::uint64_t, std::string> armed_points);
  // A guest that stays silent (no hello after attaching): inspected, bundled and rebooted as a hang.
  void declare_hang(const std::string& why);
  const CrashInterceptor& interceptor() const { return interceptor_; }
  nlohmann::json status() const;                   // recovery_state in `status`
  std::optional<nlohmann::json> verification() const;  // while a window is open

 private:
  void on_breakpoint(int vcpu);
  void on_panic_event();
  // stopped_at: when the crashing vCPU's stop reached us (interception to resume is timed from it).
  void on_crash(repair::CrashRecord record, Clock::time_point stopped_at);
  // Where a crash's time went before the repair is applied.
  struct CrashTimes {
    Clock::time_point stopped_at;  // the crashing vCPU's stop reached us
    double record_ms = 0;          // every vCPU's registers read
    double analysis_ms = 0;        // from the stop to the decision (record and repair engine included)
    double snapshot_wait_ms = 0;   // of it, waiting for the bundle's copy after the engine answered
    double ask_ms = 0, decide_ms = 0;  // …the repair engine asked (precheck included), the plan checked
  };
  // Applies the plan and resumes the guest, then calls write_down (what is written about the
  // crash) — before a reboot instead, should the repair fail.
  void resume_repaired(const repair::CrashRecord& record, const repair::RepairPlan& plan, const RepairAnswer& answer,
                       const CrashTimes& times, const std::function<void()>& write_down);
  void freeze_crashed();
  void watch_recovery();
  void fail_recovery(const std::string& check, const std::string& why);
  void cut_watch_short(std::uint64_t new_crash);
  void check_hang();
  void inspect_and_reboot_hung(std::uint64_t id, const std::string& why);
  // precheck_done, when given, learns the code precheck as soon as it is made (the bundle's
  // snapshot waits for it to take unchanged code from the healthy copy instead of guest RAM).
  // attach, when given, is called once the precheck is made and before the engine is asked: it
  // adds the crash's snapshot to the request (for a repair VM that reads snapshots).
  using AttachSnapshot = std::function<void(repair::RepairRequest&)>;
  RepairAnswer ask_repair_engine(const repair::CrashRecord& record,
                                 std::promise<std::optional<repair::TextPrecheck>>* precheck_done = nullptr,
                                 const AttachSnapshot& attach = nullptr);
  // Ends the window and any pending freeze, then reboots (guest_reboot.h).
  void reboot(const std::string& reason, std::uint64_t crash);
  void save_crash(const repair::CrashRecord& record, const nlohmann::json& analysis, const nlohmann::json& plan);

  RecoveryParts p_;
  CrashInterceptor interceptor_;
  Arming arming_;
  RecoveryBudget budget_;
  GuestReboot reboots_;
  std::unique_ptr<RecoveryWatch> watch_;
  Clock::time_point resumed_at_{};               // the VM's last resume (the hang clock's start)
  std::optional<Clock::time_point> freeze_at_;   // when to freeze a pvpanic-caught guest
  std::optional<std::uint64_t> reboot_after_freeze_;  // …and then reboot it (crash id)
};

}  // namespace immortal::vmm
