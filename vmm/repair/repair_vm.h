// --repair vm: the repair VM. A second, small VM of a kernel built for it (scripts/build-repair-kernel;
// else the guest's own) and the repair image (repair/repair_image.h): the agent as its initramfs; the repair payload and the
// host pool's two snapshot arenas read-only, and the mailbox, as PCI memory windows. It never sees the guest's RAM: a crash is
// read from its snapshot in an arena, and a profile is loaded from a snapshot of the running guest taken into an arena for it
// (a crash whose snapshot is not in the pool is analysed inline). Only without the host pool is the guest's RAM a window too.
// Booted when the guest's profile is in, then paused: a crash resumes it, posts the request, waits for the answer and pauses
// it again (and lets it prepare for the next crash a little later: settle()). The guest never sees it.
#pragma once

#include "base/unique_fd.h"
#include "dump/memory_snapshot.h"
#include "protocol/vm_windows.h"

#include "machine.h"
#include "machine_config.h"
#include "repair/repair_worker.h"
#include "repair/shared_kernel_files.h"

#include <atomic>
#include <functional>
#include <mutex>
#include <optional>
#include <thread>

namespace immortal::vmm {

// One of the host pool's snapshot arenas, as a read-only window of the repair VM.
struct ArenaWindow {
  int fd;              // read-only; reopened here
  std::uint64_t bytes; // the window's size: a power of two, no larger than the file
};

// A snapshot of the running guest in one of those arenas, for the VM to load a profile from
// (CrashBundles::snapshot_for_repair_load); nullptr when none can be taken now: asked again on
// the broker's next tick.
using LoadSnapshot = std::function<std::unique_ptr<MemorySnapshot>()>;

// The windows every repair VM has at the same PCI slots (protocol/vm_windows.h): the host pool's
// arenas and the host's kernel files. arenas: read-only opens of the arenas `sizes` describe.
void add_common_windows(MachineConfig& config, const std::vector<UniqueFd>& arenas, const std::vector<ArenaWindow>& sizes,
                        const HostKernelFiles& files);
// The mailbox, with room for a crash snapshot's page index when the VM reads snapshots: 4 bytes
// a page of guest RAM and its ranges (MemorySnapshot::index), a power of two (a PCI window).
std::uint64_t repair_mailbox_bytes(std::uint64_t guest_ram, bool snapshots);

// Where the payload lies in its window: what the first load reads.
struct PayloadPlace {
  std::uint64_t offset = 0, bytes = 0;
};

// A load of the payload at `place` posted to a repair agent's mailbox, naming a snapshot of the
// guest taken now (its page index the request's attachment); the snapshot is held until the
// answer (its arena is busy until then). nullopt when no snapshot can be taken yet. Throws Error
// saying why when none can be taken at all or the request cannot be posted.
struct PostedLoad {
  std::uint64_t seq = 0;
  std::unique_ptr<MemorySnapshot> snapshot;
  nlohmann::json described;  // status' repair.vm.load, without its "ms"
};
std::optional<PostedLoad> post_load_from_snapshot(repair::Mailbox& box, const LoadSnapshot& take, PayloadPlace place);
// Why the agent's answer to a load says it did not load (untrusted text); nullopt when it loaded.
std::optional<std::string> load_refused(const std::string& answer);

class RepairVm final : public RepairWorker {
 public:
  using Factory = std::function<std::unique_ptr<Machine>(const MachineConfig&, Deadline)>;
  // config: kernel, initrd (the agent), memory, runtime dir …; its shared windows are added
  // here. payload: the repair payload's memfd, window_bytes long (a power of two). agent: the
  // repair agent's binary on the host (its page-class mode reads the VM's free pages, which are
  // given back each time the VM is ready and paused: repair/repair_vm_trim.h). Throws Error
  // when the VM cannot be started at all.
  // arenas: the host pool's snapshot arenas as two more windows. With them and load_snapshot the
  // VM is not given the guest's RAM: each load reads a snapshot load_snapshot takes (the first,
  // of the payload at `place`, once the VM has booted). Without, the guest's RAM is a window, read
  // to load and for every crash. kernel_files: the host's files of the kernel image's symbols, of
  // the kernel's BTF and of its image's unwind tables, a window each, which the agent reads in
  // place of its own copies.
  RepairVm(const Factory& factory, MachineConfig config, const Machine::RamFile& guest_ram, int payload,
           std::uint64_t window_bytes, std::string agent, const std::vector<ArenaWindow>& arenas = {},
           HostKernelFiles kernel_files = {}, LoadSnapshot load_snapshot = {}, PayloadPlace place = {});
  ~RepairVm() override;

  const char* mode() const override { return "vm"; }
  WorkerState state() override;
  std::string status() const override { return status_; }
  double start_ms() const override { return start_ms_; }
  std::string analyse(const std::string& request, Deadline deadline, std::string_view attachment) override;
  bool reads_snapshots() const override { return !arenas_.empty(); }
  int process_id() const override { return machine_ ? machine_->process_id() : 0; }
  bool reload(std::uint64_t offset, std::uint64_t size) override;
  bool sees_guest_ram() const { return static_cast<bool>(guest_ram_); }
  // The one rule for what a repair VM is given of the guest: only snapshots when it has the host
  // pool's arenas and a way to take a snapshot to load from; else the guest's RAM as a window.
  static bool reads_only_snapshots(const std::vector<ArenaWindow>& arenas, const LoadSnapshot& load_snapshot) {
    return !arenas.empty() && load_snapshot;
  }
  void describe(nlohmann::json& into) const override;

 private:
  void fail_with(const std::string& why);
  bool machine_gone();
  void become_ready();
  void check_boot();    // while it boots
  void check_reload();  // while its agent loads a new profile
  // Posts the pending load with a snapshot of the guest, once one can be taken (the VM is
  // resumed for it when it was paused); false while none can.
  bool post_load();
  void resume_vm();     // every resume goes through here: it ends any trim in flight
  // In the background, once the VM is ready and paused (after it booted or reloaded), and again
  // when a crash resumed it before the pass was done. Nothing when one is still running.
  void start_trim();
  // state() without starting a trim that is due again (on the way into an analysis or a reload).
  WorkerState refresh_state();
  // After an answer, on the broker's ticks: resumes the VM at settle_at_, pauses it once its
  // agent is ready for the next crash (or failed, or kSettleLimit passed).
  void settle();
  bool settling() const { return settle_at_ || settling_until_; }
  void stop_settling() {  // a request comes first: its agent takes it once ready
    settle_at_.reset();
    settling_until_.reset();
  }

  MailboxMemory mailbox_;
  std::vector<UniqueFd> arenas_;  // read-only opens of the host pool's arenas
  UniqueFd guest_ram_;  // a read-only open of the guest's RAM, when the VM has it as a window
  UniqueFd payload_;    // a read-only open of the repair payload
  HostKernelFiles kernel_files_;
  std::unique_ptr<Machine> machine_;
  WorkerState state_ = WorkerState::starting;
  std::string status_ = "booting";
  std::uint64_t reload_seq_ = 0;  // a reload asked for and not answered yet
  // Without the guest's RAM: a load waiting for a snapshot to read (and whether the VM is paused
  // until it is posted), the snapshot its agent is reading (held until the answer: its arena is
  // busy until then), and how long the last one took to take (the guest paused for its copy).
  LoadSnapshot take_snapshot_;
  std::optional<PayloadPlace> load_pending_;
  bool load_resumes_ = false;
  std::unique_ptr<MemorySnapshot> load_snapshot_;
  Clock::time_point load_posted_{};
  nlohmann::json last_load_;
  Clock::time_point started_ = Clock::now();
  double start_ms_ = 0;
  // After an answer the process that gave it exits and the one for the next crash is forked
  // (≈ 40 ms of the VM's CPU under TCG with a 512 MiB guest: its windows' page tables are copied
  // and freed). Not on the next crash's path, and not on this one's either: paused with its
  // answer, the VM is resumed for that kSettleDelay later, once the guest runs again (on a 2-core
  // host it slowed the guest's resume from 1 to 35 ms), and paused when its agent is ready.
  static constexpr auto kSettleDelay = std::chrono::milliseconds(250);
  static constexpr auto kSettleLimit = std::chrono::seconds(10);
  std::optional<Clock::time_point> settle_at_;       // paused, to be resumed to settle then
  std::optional<Clock::time_point> settling_until_;  // running to settle, at most until then

  // Giving back the pages its kernel has free (repair/repair_vm_trim.h): read in a thread, punched
  // only while the VM is still paused since they were read (runs_ unchanged, under vm_mutex_).
  std::string agent_;
  std::string kernel_;  // what it boots, for `status`
  std::mutex vm_mutex_;
  std::uint64_t runs_ = 0;  // resumes so far; guarded by vm_mutex_
  std::thread trim_;
  std::atomic<bool> trimming_{false};
  mutable std::mutex trim_mutex_;
  nlohmann::json trim_result_;  // guarded by trim_mutex_
  static constexpr auto kTrimRetry = std::chrono::seconds(2);
  std::optional<Clock::time_point> trim_after_;  // a trim due again (started by state()); vm_mutex_
};

}  // namespace immortal::vmm
