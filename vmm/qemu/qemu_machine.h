// The QEMU backend of the Machine seam.
//
// One QEMU process per machine, started paused (-S) and wired as follows, all in the
// instance's private runtime directory (mode 0700, never TCP):
//   qmp.sock    QMP: lifecycle and events
//   gdb.sock    gdbstub: vCPU registers and hardware breakpoints
//   agent.sock  the virtio-serial port of the guest agent
// Guest RAM is a memfd created here and handed to QEMU as memory-backend-file
// (mem-path=/proc/self/fd/N, share=on), so we map the very pages the guest uses and nothing is
// left in /dev/shm. The guest's QEMU runs in its own session and outlives the supervisor: a
// new one attaches through the same sockets and re-opens the RAM as /proc/PID/fd/N (QMP and
// the gdbstub accept a new client after the old one is gone; connecting the gdbstub stops the
// VM, so attach resumes it when it was running). Helper VMs (the repair VM) get
// PR_SET_PDEATHSIG(SIGKILL) and die with the supervisor; one that drops root (-runas) loses that
// setting with its uid, so a watchman child that stays root kills it when the supervisor's end of
// a pipe (lifeline_) closes.
#pragma once

#include "machine.h"
#include "machine_config.h"
#include "memory/shared_ram.h"
#include "qemu/gdb_vcpus.h"
#include "qemu/qmp_client.h"

#include <sys/types.h>

#include <memory>

namespace immortal::qemu {

// QEMU's q35 split of RAM around the PCI hole (hw/i386/pc_q35.c, pc_q35_init): below 4 GiB up
// to 0xb0000000 if all of it fits, else 2 GiB below and the rest from 4 GiB.
std::vector<RamSegment> q35_ram_layout(std::uint64_t ram_bytes);

// The QEMU program: the backend option "binary", else qemu-system-x86_64 from PATH.
std::string qemu_binary(const vmm::MachineConfig& config);

// The account QEMU drops to once its devices are open (-runas), "" to stay as started.
std::string qemu_run_as(const vmm::MachineConfig& config);

// The QEMU command line for a configuration (ram_fd: the memfd QEMU inherits).
std::vector<std::string> qemu_command_line(const vmm::MachineConfig& config, int ram_fd);
// A file of the instance's runtime directory (its sockets and logs).
std::string path_in(const std::string& dir, const char* name);

class QemuMachine final : public vmm::Machine {
 public:
  // Starts QEMU paused and connects QMP and the gdbstub. Throws Error(ExitCode::qemu) with
  // QEMU's own last words when it cannot start; kills what it started on failure.
  static std::unique_ptr<QemuMachine> launch(const vmm::MachineConfig& config, Deadline deadline);
  // Takes over a QEMU started by an earlier supervisor (handle: its attach_handle()). The VM is
  // left paused; state_before_attach() says whether it was running. Throws Error(ExitCode::qemu)
  // when that QEMU is gone or is not the one the handle names.
  static std::unique_ptr<QemuMachine> attach(const vmm::MachineConfig& config, const json& handle, Deadline deadline);
  ~QemuMachine() override;

  void resume() override;
  void pause() override;
  vmm::RunState state() override;
  // QEMU's STOP and RESUME events, stamped with its clock.
  std::optional<std::chrono::steady_clock::time_point> last_stop_time() override;
  std::optional<std::chrono::steady_clock::time_point> last_resume_time() override;
  void terminate(std::chrono::milliseconds grace) override;
  const char* backend() const override { return "qemu"; }
  Capabilities capabilities() const override { return {true, true, true, true}; }
  int process_id() const override { return pid_; }
  json attach_handle() const override;
  std::optional<vmm::RunState> state_before_attach() const override { return state_before_attach_; }
  void release() override;

  int vcpu_count() const override { return vcpus_ ? vcpus_->count() : 0; }
  X86Registers read_registers(int vcpu) override;
  void write_registers(int vcpu, const X86Registers& registers) override;
  void insert_breakpoint(std::uint64_t guest_virtual) override;
  void remove_breakpoint(std::uint64_t guest_virtual) override;
  void write_virtual(int vcpu, std::uint64_t guest_virtual, std::span<const std::uint8_t> bytes) override;
  void reset() override;

  PhysicalMemory& memory() override { return *memory_; }
  std::optional<RamFile> ram_file() const override {
    return RamFile{ram_fd_.get(), config_.memory_bytes, q35_ram_layout(config_.memory_bytes)};
  }

  std::vector<int> event_fds() const override;
  std::vector<vmm::MachineEvent> drain_events() override;

  void write_native_dump(const std::string& path) override;
  UniqueFd connect_agent_channel(Deadline deadline) override;
  std::string console_socket() const override;

 private:
  QemuMachine() = default;
  void require_paused(const char* what);
  bool reap(bool block);  // true once QEMU has exited
  void connect(Deadline deadline);  // QMP and the gdbstub, then the vCPU threads

  vmm::MachineConfig config_;
  pid_t pid_ = -1;
  bool exited_ = false;
  std::string exit_description_ = "running";
  std::string exit_reason_;  // why QEMU is ending, when it said (SHUTDOWN not from the guest)
  UniqueFd ram_fd_;
  std::unique_ptr<SharedRamMemory> memory_;
  std::unique_ptr<QmpClient> qmp_;
  std::unique_ptr<GdbVcpus> vcpus_;  // the gdbstub
  vmm::RunState state_ = vmm::RunState::starting;
  int ram_fd_in_vm_ = -1;         // the descriptor number QEMU maps guest RAM from
  std::uint64_t start_time_ = 0;  // QEMU's start time (/proc/PID/stat), against pid reuse
  bool our_child_ = true;         // false when attached: its exit is seen through pidfd_
  UniqueFd pidfd_;
  UniqueFd lifeline_;             // a helper VM's watchman kills it when this closes
  bool released_ = false;
  std::optional<vmm::RunState> state_before_attach_;
};

}  // namespace immortal::qemu
