// The supervisor: owns one Machine and its agent channel for the machine's whole life, and
// serves the instance's control socket. One thread, one poll loop:
//
//   launch (paused) → connect agent channel → resume → wait for the agent's hello
//   → serve: machine events, agent messages, control requests, signals
//   → stop: ask the guest to power off, then end the VM (never leaves QEMU running)
#pragma once

#include "accelerator.h"
#include "agent_channel.h"
#include "control_channel.h"
#include "instance.h"
#include "machine.h"
#include "machine_config.h"
#include "profile_collector.h"
#include "kernel/kernel.h"
#include "recovery/bundle_recorder.h"
#include "recovery/crash_interceptor.h"
#include "recovery/event_log.h"
#include "recovery/quarantine.h"
#include "recovery/recovery_policy.h"
#include "recovery/recovery_verifier.h"
#include "repair/repair_broker.h"

#include <chrono>
#include <functional>
#include <map>
#include <memory>
#include <string>

namespace immortal::vmm {

using MachineFactory = std::function<std::unique_ptr<Machine>(const MachineConfig&, Deadline)>;

struct SupervisorOptions {
  MachineConfig machine;
  AcceleratorChoice accelerator;
  std::chrono::milliseconds hello_timeout{60'000};
  std::chrono::milliseconds stop_grace{5'000};  // for the guest to power itself off
  bool echo_console = false;                    // copy the serial console to stdout
  RecoveryPolicy recovery;                      // --recovery on|off and its limits (docs/recovery.md)
  std::string event_log;                        // --event-log: also append events here
  BundleSettings bundles;                       // --bundle-dir and friends (docs/bundle-format.md)
  RepairSettings repair;                        // --repair vm|inline and friends (docs/recovery.md)
  // Called once the guest is up — its agent said hello and, with recovery on, crash interception
  // is armed (or could not be, which it then says) — used by --detach to release the parent.
  std::function<void(const std::string& summary)> on_ready;
  // Progress lines for the operator ("immortal: ..."); stderr by default.
  std::function<void(const std::string&)> say;
};

class Supervisor {
 public:
  Supervisor(SupervisorOptions options, InstanceDir dir, MachineFactory factory);
  ~Supervisor();

  // Runs until the guest is stopped; returns the exit status for the CLI. Throws Error for a
  // start-up failure (QEMU, agent hello) after cleaning up.
  int run();

 private:
  void boot();
  void serve();
  // One turn of the loop: wait up to a tick, then handle whatever is ready.
  void poll_once(bool agent_errors_are_fatal);
  void shutdown_machine();
  void handle_signals();
  void handle_machine_events();
  void accept_control();
  void handle_control(int fd);
  void answer(int fd, const json& request);
  void answer_exec(int fd, const json& request);
  void answer_inject(int fd, const json& request);
  json introspect(const std::string& part);
  void answer_unquarantine(int fd, const json& request);
  void answer_bundle(int fd);

  // Recovery (docs/recovery.md).
  Kernel& guest_kernel();                 // from the newest profile, translations fresh
  void arm_interception();
  // The repair image and its workers follow the profile (repair/repair_broker.h).
  void rebuild_repair_image(const std::string& taken_at);
  // The repair engine's verdict on a crash, from the repair VM or the inline process.
  RepairAnswer ask_repair_engine(const repair::CrashRecord& record);
  void on_breakpoint(int vcpu);
  void on_crash(repair::CrashRecord record);
  void verify_recovery();
  // A verification that cannot finish: a failed check reboots, a new crash cuts it short.
  void fail_recovery(const std::string& check, const std::string& why);
  void cut_verification_short(std::uint64_t new_crash);
  void check_hang();
  void reboot_guest(const std::string& reason, std::uint64_t crash);
  // kdump armed in the guest (a crash kernel loaded): crashes not recovered go to it.
  bool guest_has_kdump();
  void hand_to_guest_kdump(const std::string& reason, std::uint64_t crash);
  // What every way out of a crashed boot does: the event, the outcome, the bundle, the count.
  void leave_boot(const char* event_name, const std::string& outcome, const std::string& reason, std::uint64_t crash,
                  const char* to_clients);
  void forget_boot();
  void after_reboot_hello();
  void save_crash(const repair::CrashRecord& record, const json& analysis, const json& plan);
  // Bundles: the copy is taken while the guest is stopped; the crash's bundle is written once
  // its outcome is known (recovered, rebooted, frozen).
  BundleCapture capture_for_bundle(std::vector<X86Registers> registers, int crash_cpu);
  void hold_crash_bundle(const repair::CrashRecord& record, BundleCapture capture, const json& analysis,
                         const json& plan, const std::string& decision, const std::string& reason);
  void finish_crash_bundle(const std::string& outcome, json more_timings = json::object());
  void collect_bundles();
  void prepare_bundle_arena();
  void event(const std::string& name, json fields);
  // Tells on_ready (once) that the guest is up, and how it is protected.
  void report_ready(const std::string& how);
  // Runs f with the guest paused (if it was running), resuming it afterwards whatever happens.
  template <typename F>
  auto while_paused(F&& f) -> decltype(f());
  json status() const;
  void pump_console();
  std::string last_console_lines(std::size_t n) const;

  SupervisorOptions options_;
  InstanceDir dir_;
  MachineFactory factory_;
  std::unique_ptr<Machine> machine_;
  std::unique_ptr<AgentChannel> agent_;
  std::unique_ptr<ProfileCollector> profile_;
  std::unique_ptr<Kernel> kernel_;       // the guest kernel seen through its profile
  std::shared_ptr<const GuestProfile> guest_profile_;  // …that profile
  std::uint64_t kernel_profile_ = 0;     // the number of the profile kernel_ was built from
  UniqueFd control_listener_;
  UniqueFd signal_fd_;
  std::map<int, std::unique_ptr<ControlConnection>> clients_;
  Clock::time_point started_{};
  std::optional<std::chrono::milliseconds> boot_time_;
  bool stop_requested_ = false;
  std::string stop_reason_;
  int exit_code_ = 0;
  std::string guest_state_ = "starting";
  std::uint64_t console_offset_ = 0;
  std::optional<Clock::time_point> pause_after_crash_;  // when to freeze a crashed guest
  std::optional<std::uint64_t> reboot_after_pause_;     // …and then reboot it (crash id)

  std::unique_ptr<CrashInterceptor> interceptor_;
  EventLog events_;
  QuarantineList quarantine_;
  RecoveryBudget budget_;
  std::uint64_t armed_profile_ = 0;    // the number of the profile the breakpoints come from
  std::uint64_t crashes_ = 0, recoveries_ = 0, reboots_ = 0;
  std::string old_boot_id_;            // while rebooting: the boot that crashed
  struct Verification {
    std::uint64_t crash = 0;
    Clock::time_point resumed_at{}, deadline{};
    std::uint64_t heartbeats = 0;       // at resume: a later one proves the guest runs
    bool probe_sent = false;
    std::optional<bool> probe_ok;
    std::string probe_error;
    std::optional<double> agent_ms;       // when the agent proved the guest runs (after resume)
    std::unique_ptr<RecoveryVerifier> watch;  // the window of checks from guest memory
    Clock::time_point next_look{};
  };
  std::optional<Verification> verification_;
  json last_crash_;
  std::unique_ptr<BundleRecorder> bundles_;
  std::unique_ptr<RepairBroker> repair_;
  std::optional<BundleJob> pending_bundle_;  // a crash's bundle waiting for its outcome
  std::uint64_t bundle_arena_profile_ = 0;   // the number of the profile the arena was sized with
  std::string ready_summary_;          // reported through on_ready once the guest is protected
};

}  // namespace immortal::vmm
