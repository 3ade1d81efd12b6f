// The memory the repair engine reads a crash from. In the repair VM that is the crash's snapshot:
// the bundle's copy of the stopped guest's kernel pages, in the host pool's arena the VM sees as a
// window (RepairRequest::snapshot). The snapshot leaves the kernel's code pages that the
// supervisor's precheck found unchanged for after the guest resumed (they are the healthy copy's
// bytes: MemorySnapshot's KnownPages); here they are read from the healthy copy, which is the
// same bytes. Everywhere else the engine reads the stopped guest's RAM.
#pragma once

#include "dump/memory_snapshot.h"
#include "engine/healthy_image.h"
#include "engine/text_precheck.h"
#include "memory/physical_memory.h"

#include <functional>
#include <map>
#include <memory>
#include <vector>

namespace immortal::repair {

// A snapshot, with the whole code pages `precheck` did not find differing read from the healthy
// copy. pages: whole_code_pages(healthy, false), sorted by physical address; they and healthy must
// outlive this. Without a precheck every page is the snapshot's (it then copied the code too).
class SnapshotWithCode final : public PhysicalMemory {
 public:
  SnapshotWithCode(std::unique_ptr<MemorySnapshot> snapshot, const std::vector<WholeCodePage>& pages,
                   const std::optional<TextPrecheck>& precheck);
  const std::vector<PhysicalRange>& ranges() const override { return snapshot_->ranges(); }
  void read(std::uint64_t address, std::span<std::byte> out) const override;
  bool writable() const override { return false; }
  void write(std::uint64_t address, std::span<const std::byte>) override;
  std::size_t code_pages() const { return code_.size(); }  // read from the healthy copy
  // Reads served from the healthy copy so far, and the time they took (unpacking its frames).
  std::uint64_t code_reads() const { return code_reads_; }
  double code_read_ms() const { return code_read_ms_; }
  const MemorySnapshot& snapshot() const { return *snapshot_; }

 private:
  std::unique_ptr<MemorySnapshot> snapshot_;
  std::vector<const WholeCodePage*> code_;  // sorted by physical address
  // A reader per frame of the copy read so far: each frame is unpacked once per crash (the reads
  // jump between the functions of a backtrace; one reader per region unpacked ten times more).
  mutable std::map<std::pair<const HealthyRegion*, std::uint64_t>, RegionReader> readers_;
  mutable std::uint64_t code_reads_ = 0;
  mutable double code_read_ms_ = 0;
};

// What a loaded engine reads: the guest's RAM, or for one request another memory (a crash's
// snapshot). The kernel view is opened on this, so it follows the switch.
//
// The RAM may be given up once the engine is loaded (the repair VM's pid 1: the page tables of a
// mapping of all guest RAM were what each fork for the next crash copied) and mapped again by
// map_ram when a request needs it (one whose snapshot is not in the host pool).
class EngineMemory final : public PhysicalMemory {
 public:
  using MapRam = std::function<std::unique_ptr<PhysicalMemory>()>;
  explicit EngineMemory(std::unique_ptr<PhysicalMemory> ram, MapRam map_ram = {})
      : ram_(std::move(ram)), map_ram_(std::move(map_ram)), now_(ram_.get()) {}
  void use(const PhysicalMemory* memory) { now_ = memory ? memory : ram_.get(); }  // nullptr: the RAM again
  bool reads_ram() const { return now_ && now_ == ram_.get(); }
  bool has_ram() const { return ram_ || map_ram_; }  // mapped, or can be
  // Unmaps the RAM (only when it can be mapped again); reads fail with MemoryFault until
  // map_ram() or use().
  void drop_ram();
  void map_ram();  // the RAM mapped again if it was dropped, and read from now on
  const std::vector<PhysicalRange>& ranges() const override;
  void read(std::uint64_t address, std::span<std::byte> out) const override;
  bool writable() const override { return false; }
  void write(std::uint64_t address, std::span<const std::byte>) override;

 private:
  std::unique_ptr<PhysicalMemory> ram_;
  MapRam map_ram_;
  const PhysicalMemory* now_;
};

}  // namespace immortal::repair
