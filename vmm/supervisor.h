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
  bool recovery = true;                         // --recovery on|off (see docs/recovery.md)
  // Called once the guest's agent said hello (used by --detach to release the parent).
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
  std::string kernel_profile_;           // taken_at of the profile kernel_ was built from
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
};

}  // namespace immortal::vmm
