// --repair-vm-shared: one repair VM for every guest of one kernel on this host, instead of one per
// guest (issue 20: most of a repair VM's cost — QEMU itself, TCG's translated code, its kernel —
// does not depend on the guest, and a VM that never sees a guest's RAM can serve several).
//
// The VM has kSharedSlots slots, each a mailbox and a payload window (PCI 00:18.k and 00:19.k);
// inside, pid 1 runs one process per slot, under an account of its own, and that process runs what
// pid 1 of a VM of one guest runs: load a profile from a snapshot, fork a process per crash
// (repair-image/agent/repair_agent.cc). Several supervisors — separate processes — share it
// through the files of one directory, SHARED_DIR/repair-vm-KEY-N/ (KEY: a digest of everything the
// VM is made of: kernel, agent, arenas, the kernel's host files, window sizes; N: the instance, as
// the ninth guest of a kernel starts a second VM):
//   lock           held while a supervisor joins or leaves: the VM is started and ended under it
//   vm.json        its QEMU's pid and start time
//   slot-K.lock    held by the supervisor using slot K, for as long as it does
//   mailbox-K, payload-K   slot K's windows (sparse files); a supervisor's payload is written
//                  there and nowhere else (take_payload())
//   vm/            QEMU's sockets and console log
// The VM is never paused: several supervisors cannot share one pause. It sleeps until a
// supervisor rings its doorbell (vm/doorbell.in, a FIFO whose bytes — slot numbers — reach the
// VM's second serial port) after it posts to its slot's mailbox; its kernel idles without ticks,
// and reports the pages it frees, which QEMU gives back to the host (virtio-balloon's free page
// reporting). A supervisor
// that takes a slot gives it a new session number: the slot's process of the last user ends, and
// the fresh one serves the new guest. The last supervisor to leave ends the VM. One killed before
// it could leave leaves its slot free (its lock died with it) and the VM to the next one to join.
#pragma once

#include "repair/repair_vm.h"

namespace immortal::vmm {

using repair::kSharedSlots;
// How many shared VMs the guests of one kernel may start, eight guests each; a guest that finds
// them all full gets a repair VM of its own.
inline constexpr int kSharedVmsPerKernel = 16;

class SharedRepairVm final : public RepairWorker {
 public:
  // config: the repair VM's configuration as for a VM of one guest (kernel, initrd, vCPUs …);
  // shared_dir: the runtime root's shared directory. payload: the image's payload memfd
  // (window_bytes long), copied into the slot. Needs the arenas and load_snapshot (the VM never
  // sees a guest's RAM). Throws Error when the VM cannot be joined or started, or the slots of every
  // instance (kSharedVmsPerKernel) are taken.
  SharedRepairVm(const RepairVm::Factory& factory, MachineConfig config, const std::string& shared_dir, int payload,
                 std::uint64_t window_bytes,
                 const std::vector<ArenaWindow>& arenas, HostKernelFiles kernel_files, LoadSnapshot load_snapshot,
                 PayloadPlace place);
  ~SharedRepairVm() override;

  // The slot's payload file, read-write, for the image to keep its payload in from now on (one
  // copy: the supervisor's healthy copy, a reload's rewrite and the VM's window are the same pages).
  UniqueFd take_payload() const;

  const char* mode() const override { return "vm"; }
  WorkerState state() override;
  std::string status() const override { return status_; }
  double start_ms() const override { return start_ms_; }
  std::string analyse(const std::string& request, Deadline deadline, std::string_view attachment) override;
  bool reads_snapshots() const override { return true; }
  int process_id() const override { return pid_; }
  bool reload(std::uint64_t offset, std::uint64_t size) override;
  void describe(nlohmann::json& into) const override;

 private:
  void join_or_start(const RepairVm::Factory& factory, MachineConfig config, const std::vector<ArenaWindow>& arenas,
                     std::uint64_t mailbox_bytes);
  bool vm_alive() const;
  void fail_with(const std::string& why);
  bool post_load();
  void check_load();
  void ring() const;  // the slot's doorbell: its agent looks at its mailbox now

  std::string dir_, key_, kernel_;
  int instance_ = 0, slot_ = -1;
  UniqueFd slot_lock_;
  UniqueFd payload_;  // the slot's payload file
  UniqueFd doorbell_;  // written: the VM's doorbell (a FIFO its QEMU reads)
  std::unique_ptr<MailboxMemory> mailbox_;
  std::unique_ptr<Machine> machine_;  // only in the supervisor that started the VM
  int pid_ = 0;
  std::uint64_t start_time_ = 0;
  bool started_vm_ = false;
  HostKernelFiles kernel_files_;
  WorkerState state_ = WorkerState::starting;
  std::string status_ = "joining the shared repair VM";
  LoadSnapshot take_snapshot_;
  std::optional<PayloadPlace> load_pending_;
  std::unique_ptr<MemorySnapshot> load_snapshot_;
  std::uint64_t load_seq_ = 0;
  Clock::time_point started_ = Clock::now(), load_posted_{};
  nlohmann::json last_load_;
  double start_ms_ = 0;
  std::uint64_t window_bytes_ = 0;
};

}  // namespace immortal::vmm
