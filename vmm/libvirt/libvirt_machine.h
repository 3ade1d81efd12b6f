// The libvirt backend of the Machine seam: a running libvirt domain (prepared with `immortal
// prepare`), supervised without owning it. libvirt keeps the domain's QEMU; we reach it only
// through libvirt's API:
//   lifecycle       domain events (stopped, migrated, saved) and QMP passed through libvirt
//                   (virDomainQemuMonitorCommand: stop, cont, query-status, system_reset)
//   vCPUs           QEMU's gdbstub on a socket pair: one end handed to QEMU with the QMP command
//                   (getfd + chardev-add + `gdbserver chardev:…`), the other one ours; no file,
//                   no port, nothing another user can connect to
//   guest RAM       the shared file libvirt backs it with (query-memdev, qom-get mem-path), its
//                   layout from QEMU's own memory tree (any machine type)
//   agent channel   the UNIX socket libvirt made for the org.immortal.agent.0 channel
// Passing QMP through libvirt marks the domain tainted ("custom-monitor") in libvirt's log.
// Stopping the supervisor lets go of the domain (it runs on; `virsh` keeps working all along);
// terminate() is for an explicit `immortal stop --shutdown`.
#pragma once

#include "base/unique_fd.h"
#include "libvirt/libvirt_connection.h"
#include "machine.h"
#include "machine_config.h"
#include "memory/shared_ram.h"
#include "qemu/gdb_vcpus.h"

#include <memory>
#include <mutex>
#include <optional>
#include <vector>

namespace immortal::vmm {

class LibvirtEventInbox;

// What identifies a libvirt domain to a later supervisor: state.json's "vm".
nlohmann::json libvirt_handle(const std::string& uri, const std::string& uuid, const std::string& name);

class LibvirtMachine final : public Machine {
 public:
  // Supervises the running domain the handle names (libvirt_handle()). The VM is left paused;
  // state_before_attach() says how it was. Throws Error(ExitCode::libvirt) for libvirt's refusals,
  // Error(ExitCode::unsupported) for a domain that is not prepared (no shared RAM file, no agent
  // channel), Error(ExitCode::qemu) for what QEMU refuses.
  static std::unique_ptr<LibvirtMachine> attach(const MachineConfig& config, const nlohmann::json& handle, Deadline deadline);
  ~LibvirtMachine() override;

  void resume() override;
  void pause() override;
  RunState state() override;
  void terminate(std::chrono::milliseconds grace) override;
  const char* backend() const override { return "libvirt"; }
  Capabilities capabilities() const override { return {true, true, true, true, /*owns_vm=*/false}; }
  int process_id() const override { return pid_; }
  nlohmann::json attach_handle() const override { return handle_; }
  std::optional<RunState> state_before_attach() const override { return state_before_attach_; }
  void release() override;

  int vcpu_count() const override { return vcpus_ ? vcpus_->count() : 0; }
  X86Registers read_registers(int vcpu) override;
  void write_registers(int vcpu, const X86Registers& registers) override;
  void insert_breakpoint(std::uint64_t guest_virtual) override;
  void remove_breakpoint(std::uint64_t guest_virtual) override;
  void write_virtual(int vcpu, std::uint64_t guest_virtual, std::span<const std::uint8_t> bytes) override;
  void reset() override;

  PhysicalMemory& memory() override { return *memory_; }
  std::optional<RamFile> ram_file() const override { return RamFile{ram_fd_.get(), ram_size_, segments_}; }

  std::vector<int> event_fds() const override;
  std::vector<MachineEvent> drain_events() override;

  void write_native_dump(const std::string& path) override;
  UniqueFd connect_agent_channel(Deadline deadline) override;
  void annotate(const nlohmann::json& protection) override;

 private:
  LibvirtMachine() = default;
  // One QMP command through libvirt (fds: descriptors sent along, for getfd).
  nlohmann::json monitor(const std::string& command, nlohmann::json arguments = nlohmann::json::object(),
                         std::vector<int> fds = {});
  void open_domain();  // the connection, the domain and the event callbacks
  void close_domain();
  void map_ram();
  void connect_gdbstub(Deadline deadline);
  void require_paused(const char* what);

  MachineConfig config_;
  nlohmann::json handle_;
  std::unique_ptr<LibvirtConnection> connection_;
  std::optional<LibvirtDomain> domain_;
  std::shared_ptr<LibvirtEventInbox> inbox_;  // what libvirt's callbacks leave for our thread
  std::vector<int> callbacks_;         // monitor-event callback ids
  int lifecycle_callback_ = -1;
  bool close_callback_ = false;
  int pid_ = 0;
  UniqueFd ram_fd_;
  std::uint64_t ram_size_ = 0;
  std::vector<RamSegment> segments_;
  std::unique_ptr<SharedRamMemory> memory_;
  std::unique_ptr<qemu::GdbVcpus> vcpus_;  // the gdbstub on our end of the socket pair
  RunState state_ = RunState::paused;
  std::optional<RunState> state_before_attach_;
  double attached_at_ = 0;  // wall-clock seconds: monitor events older than this are the attach's own
  bool released_ = false;
  bool gone_ = false;           // the domain stopped (or left this host)
  bool gone_reported_ = false;  // …and drain_events() said so (once)
};

}  // namespace immortal::vmm
