#include "engine/crash_memory.h"

#include <algorithm>
#include <chrono>
#include <cstring>

namespace immortal::repair {

SnapshotWithCode::SnapshotWithCode(std::unique_ptr<MemorySnapshot> snapshot, const std::vector<WholeCodePage>& pages,
                                   const std::optional<TextPrecheck>& precheck)
    : snapshot_(std::move(snapshot)) {
  if (!precheck) return;
  std::vector<bool> unchanged = unchanged_code(pages, *precheck);
  for (std::size_t i = 0; i < pages.size(); ++i)
    if (unchanged[i]) code_.push_back(&pages[i]);
}

void SnapshotWithCode::read(std::uint64_t address, std::span<std::byte> out) const {
  while (!out.empty()) {
    std::uint64_t page = address & ~(MemorySnapshot::kPageSize - 1);
    std::size_t n = static_cast<std::size_t>(std::min<std::uint64_t>(out.size(), page + MemorySnapshot::kPageSize - address));
    auto it = std::lower_bound(code_.begin(), code_.end(), page,
                               [](const WholeCodePage* p, std::uint64_t pa) { return p->physical < pa; });
    if (it != code_.end() && (*it)->physical == page) {
      const WholeCodePage& p = **it;
      auto t0 = std::chrono::steady_clock::now();
      std::uint64_t offset = p.offset + (address - page);
      auto reader = readers_.try_emplace({p.region, offset / kPackedChunk}, *p.region).first;
      std::memcpy(out.data(), reader->second.at(offset, n), n);
      ++code_reads_;
      code_read_ms_ += std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
    } else {
      snapshot_->read(address, out.first(n));
    }
    out = out.subspan(n);
    address += n;
  }
}

void SnapshotWithCode::write(std::uint64_t address, std::span<const std::byte> data) {
  throw MemoryFault(address, data.size(), "the crash's snapshot is read-only to the repair engine");
}

void EngineMemory::drop_ram() {
  if (!map_ram_) return;
  if (now_ == ram_.get()) now_ = nullptr;
  ram_.reset();
}

void EngineMemory::map_ram() {
  if (!ram_ && map_ram_) ram_ = map_ram_();
  now_ = ram_.get();
}

const std::vector<PhysicalRange>& EngineMemory::ranges() const {
  static const std::vector<PhysicalRange> none;
  return now_ ? now_->ranges() : none;
}

void EngineMemory::read(std::uint64_t address, std::span<std::byte> out) const {
  if (!now_) throw MemoryFault(address, out.size(), "the guest's RAM is not mapped here now");
  now_->read(address, out);
}

void EngineMemory::write(std::uint64_t address, std::span<const std::byte> data) {
  throw MemoryFault(address, data.size(), "the repair engine does not write guest memory");
}

}  // namespace immortal::repair
