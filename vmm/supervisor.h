// The supervisor: the loop and the wiring of one supervised guest, with no policy of its own.
// It owns the Machine, the agent channel and the rooms (docs/architecture.md): the recovery
// coordinator, crash bundles, the live kernel view, the crash ledger and the control server.
// One thread, one poll loop:
//
//   launch (paused) → connect agent channel → resume → wait for the agent's hello
//   → serve: machine events, agent messages, control requests, signals
//   → stop: ask the guest to power off, then end the VM (never leaves QEMU running)
#pragma once

#include "accelerator.h"
#include "agent_channel.h"
#include "console_log.h"
#include "control/commands.h"
#include "control/control_server.h"
#include "control/event_hook.h"
#include "control/metrics.h"
#include "control/metrics_server.h"
#include "guest_state.h"
#include "instance.h"
#include "instance_state.h"
#include "machine_backends.h"
#include "live_kernel.h"
#include "machine.h"
#include "machine_config.h"
#include "profile_collector.h"
#include "recovery/crash_bundles.h"
#include "recovery/crash_ledger.h"
#include "recovery/event_log.h"
#include "recovery/quarantine.h"
#include "recovery/recovery_coordinator.h"
#include "recovery/recovery_policy.h"
#include "repair/repair_broker.h"

#include <chrono>
#include <functional>
#include <map>
#include <memory>
#include <string>

namespace immortal::vmm {

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
  nlohmann::json settings;                      // the `run` options, kept in state.json for a later attach
  // Set to take over the VM an earlier supervisor of this instance left running (attach,
  // upgrade, a restart after SIGKILL) instead of launching one.
  std::optional<InstanceState> take_over;
  // Called once the guest is up — its agent said hello and, with recovery on, crash interception
  // is armed (or could not be, which it then says) — used by --detach to release the parent.
  std::function<void(const std::string& summary)> on_ready;
  // Progress lines for the operator ("immortal: ..."); stderr by default.
  std::function<void(const std::string&)> say;
  std::string metrics_listen;  // --metrics-listen ADDR:PORT: the Prometheus endpoint (empty: none)
  std::string on_event;        // --on-event CMD: run for every event, the event on stdin (empty: none)
};

class Supervisor {
 public:
  Supervisor(SupervisorOptions options, InstanceDir dir, const MachineBackend& backend);
  ~Supervisor();

  // Runs until the guest is stopped; returns the exit status for the CLI. Throws Error for a
  // start-up failure (QEMU, agent hello) after cleaning up.
  int run();

 private:
  static constexpr auto kLaunchTimeout = std::chrono::seconds(30);  // a VM started, or attached to
  void boot();
  void take_over(const InstanceState& state);
  void build_rooms();
  // Where files that every instance of this runtime directory uses alike are kept once (the
  // repair VM's initramfs, the kernel image's symbols): repair/shared_file.h.
  std::string shared_dir() const;
  void wait_for_hello(bool attaching);
  // state.json, whenever what it holds changed.
  void persist();
  // `immortal upgrade`: let go, start the new binary, and take back on failure (upgrade.h).
  void upgrade(ControlRequest request);
  void release_instance();
  // Stopping the supervisor of a VM it does not own (a libvirt domain): the VM runs on, unwatched.
  void let_go();
  void serve();
  // Says so, and an event, when the agent set stalled serial ports going again (serial_watch.h).
  void note_serial_rearms();
  // One turn of the loop: wait up to a tick, then handle whatever is ready.
  void poll_once(bool agent_errors_are_fatal);
  void handle_signals();
  void handle_machine_events();
  void stop(const std::string& reason, int exit_code);
  void shutdown_machine();
  void event(const std::string& name, json fields);
  // Tells on_ready (once) that the guest is up, and how it is protected.
  void report_ready(const std::string& how);
  json status() const;
  // Every loop turn: the Prometheus exposition (fresh after events, at most a second old
  // otherwise), and the --on-event hooks that ended or ran too long.
  void report_tick();

  SupervisorOptions options_;
  InstanceDir dir_;
  const MachineBackend& backend_;
  GuestStatus state_;
  EventLog events_;
  QuarantineList quarantine_;
  CrashLedger ledger_;
  // The rooms, built at boot once the VM exists (docs/architecture.md).
  std::unique_ptr<Machine> machine_;
  std::unique_ptr<AgentChannel> agent_;
  std::unique_ptr<ProfileCollector> profile_;
  std::unique_ptr<LiveKernel> kernel_;
  // Whether the live kernel reads the kernel image's symbols and its BTF from the host's files of
  // them (repair/shared_kernel_files.h), and its image's unwind tables, for `status`:
  // profile.kernel_symbols, profile.kernel_types, profile.kernel_unwind_tables.
  nlohmann::json kernel_symbols_, kernel_types_, kernel_unwind_;
  std::unique_ptr<CrashBundles> bundles_;
  std::unique_ptr<RepairBroker> repair_;
  std::unique_ptr<RecoveryCoordinator> recovery_;
  std::unique_ptr<ControlServer> control_;
  std::unique_ptr<LiveIntrospection> introspection_;  // ps, lsmod, dmesg
  std::unique_ptr<CommandTargets> commands_;

  UniqueFd signal_fd_;
  Clock::time_point started_{};
  std::optional<std::chrono::milliseconds> boot_time_;
  bool stop_requested_ = false;
  bool shut_down_vm_ = false;  // `stop --shutdown`: power off even a VM we do not own
  std::string stop_reason_;
  int exit_code_ = 0;
  ConsoleLog console_;
  std::string ready_summary_;  // reported through on_ready once the guest is protected
  std::string persisted_;      // the state.json last written
  Clock::time_point annotated_{};  // the machine's account of our protection, last left
  InstanceMetrics metrics_{options_.machine.name};
  std::unique_ptr<MetricsServer> metrics_server_;
  Clock::time_point metrics_published_{};
  bool metrics_due_ = false;
  std::unique_ptr<EventHook> hook_;
  std::optional<ControlRequest> upgrade_request_;
  bool released_ = false;      // handed over: the VM runs on without us
  std::uint64_t serial_rearmed_ = 0;  // the agent's count last seen (note_serial_rearms)
};

}  // namespace immortal::vmm
