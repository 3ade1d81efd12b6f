// Chooses where each crash is analysed (docs/recovery.md, "Where the analysis runs"): the repair
// VM (--repair vm, default) or the sandboxed inline process (--repair inline); when that one is
// missing, booting, dead or too slow, the fallback (--repair-fallback inline|reboot) — and says
// so. Keeps the repair image in step with the guest's profile and restarts dead workers.
#pragma once

#include "engine/repair_service.h"
#include "repair/repair_engine.h"
#include "machine.h"
#include "repair/repair_image.h"
#include "repair/repair_vm.h"

#include <nlohmann/json.hpp>

#include <chrono>
#include <functional>
#include <memory>
#include <optional>
#include <string>

namespace immortal::vmm {

// The repair VM's memory when not set: enough for its kernel, an agent holding a payload of
// payload_bytes and two processes mapping a guest RAM window of guest_ram_bytes (a multiple of
// 16 MiB).
std::uint64_t repair_vm_memory(std::uint64_t payload_bytes, std::uint64_t guest_ram_bytes);
// The same for the VM shared by the guests of one kernel (--repair-vm-shared): its eight slots.
std::uint64_t shared_repair_vm_memory(std::uint64_t payload_bytes, std::uint64_t guest_ram_bytes);

struct RepairSettings {
  std::string mode = "vm";          // vm | inline
  std::string fallback = "inline";  // inline | reboot
  std::chrono::milliseconds timeout{5000};  // for one answer
  bool cross_check = false;         // also ask the other mode and compare (testing, validation)
  std::string agent;                // --repair-agent (else found next to immortal)
  std::uint64_t vm_memory = 0;  // 0: sized from the repair payload (repair_vm_memory())
  // --repair-vm-shared: one repair VM for the guests of one kernel on this host (repair/shared_repair_vm.h),
  // when it can serve this guest (it reads only snapshots in the host's arenas); else one of its own.
  bool vm_shared = false;
  // The repair VM's kernel when it is not the guest's (a guest booted by its firmware from its
  // own disk has none we can name). Any x86-64 kernel with PCI serves: it only runs the agent.
  std::string vm_kernel;
  // Where files that every instance of the runtime root boots alike are kept once (the repair
  // VM's initramfs); empty: in the instance's own directory.
  std::string shared_dir;
  // The host pool's snapshot arenas as read-only windows for a repair VM of a guest of this many
  // bytes of RAM (CrashBundles::arena_windows); none: its VM sees the guest's RAM, to load and for every crash.
  std::function<std::vector<ArenaWindow>(std::uint64_t guest_ram)> arena_windows;
  // A snapshot of the running guest in one of those arenas for the repair VM to load a profile
  // from (CrashBundles::snapshot_for_repair_load): with arenas and this, the VM is not given the
  // guest's RAM at all.
  LoadSnapshot load_snapshot;
  // The guest kernel's image symbols as the supervisor holds them (the host's copy in shared_dir:
  // repair/shared_kernel_files.h), shown to the repair VM as one more window so that its agent keeps no
  // copy of its own; null, or a block with no file there: it keeps its own.
  std::function<std::shared_ptr<const ImageSymbols>()> image_symbols;
  std::function<std::uint64_t()> image_base;  // where this boot has the kernel image (the block's offsets' base)
  // The guest kernel's BTF and its image's unwind tables the same way, when the supervisor holds
  // the host's copies.
  std::function<std::optional<SharedFileRef>()> kernel_btf, kernel_unwind;
};

class RepairBroker final : public RepairEngine {
 public:
  using Say = std::function<void(const std::string&)>;
  using Event = std::function<void(const std::string& name, nlohmann::json fields)>;
  RepairBroker(RepairSettings settings, RepairVm::Factory factory, MachineConfig vm_config, std::string dir, Say say,
               Event event);
  ~RepairBroker();

  // A new healthy profile: rebuilds the repair image and restarts the workers with it.
  void rebuild(const std::string& profile_dir, const repair::HealthyImage& healthy, const Machine::RamFile& ram) override;
  // Every tick: notices workers becoming ready or failing; restarts failed ones (with back-off).
  void poll();
  RepairAnswer analyse(const repair::RepairRequest& request) override;
  const repair::HealthyImage* healthy() const override { return healthy_.get(); }
  const std::string& mode() const override { return settings_.mode; }
  bool reads_snapshots() override;
  nlohmann::json status();

 private:
  struct Slot {
    std::string mode;
    std::unique_ptr<RepairWorker> worker;
    std::string reported;           // the state last reported as an event
    Clock::time_point retry_at{};
    int failures = 0;
  };
  void start(Slot& slot);
  // Whether a repair VM for a guest of this much RAM would be given the RAM as a window (no host
  // arenas to load and analyse from instead).
  bool vm_needs_ram_window(std::uint64_t guest_ram) const;
  // The host's files of the kernel image's symbols, of the kernel's BTF and of its image's ORC
  // tables for a worker's agent, those there are.
  HostKernelFiles host_kernel_files() const;
  // What the payload may leave to those files (the agents are given them): the image's symbols,
  // the kernel's BTF, the image's ORC tables.
  PayloadKernelPart payload_kernel_part() const;
  void watch(Slot& slot);
  // A request as each worker is sent it: with the crash's snapshot (and its index, the
  // attachment) for one that reads snapshots, plain for the others.
  struct Texts {
    std::string plain, with_snapshot;
    std::string_view index;
  };
  bool answer_from(Slot& slot, const Texts& request, RepairAnswer& out, bool wait_for_start);
  Slot* other_slot(const std::string& mode);

  RepairSettings settings_;
  RepairVm::Factory factory_;
  MachineConfig vm_config_;
  std::string dir_;
  Say say_;
  Event event_;
  // The image's sizes, as the repair-image event and status show them.
  nlohmann::json image_json() const;
  std::optional<RepairImage> image_;
  // Read in place from the image's payload (healthy_in_payload): taken again whenever its slot changes.
  std::shared_ptr<const repair::HealthyImage> healthy_;
  Machine::RamFile ram_;
  Slot vm_{"vm", nullptr, "", {}, 0};
  // What the running repair VM's windows hold: a new payload is loaded in place only if they serve it.
  KernelPartDigests vm_windows_;
  Slot inline_{"inline", nullptr, "", {}, 0};
};

}  // namespace immortal::vmm
