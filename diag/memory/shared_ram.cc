#include "memory/shared_ram.h"

#include "base/error.h"

#include <sys/mman.h>

#include <algorithm>
#include <cstring>

namespace immortal {

SharedRamMemory::SharedRamMemory(int fd, std::uint64_t file_size, std::vector<RamSegment> segments, bool writable)
    : file_size_(file_size), writable_(writable), segments_(std::move(segments)) {
  std::sort(segments_.begin(), segments_.end(),
            [](const RamSegment& a, const RamSegment& b) { return a.guest_physical < b.guest_physical; });
  for (const auto& s : segments_) {
    if (s.file_offset > file_size_ || s.size > file_size_ - s.file_offset)
      fail(ExitCode::failure, "RAM segment {:#x}+{:#x} lies outside the {:#x}-byte RAM file",
           s.guest_physical, s.size, file_size_);
    if (!ranges_.empty() && s.guest_physical < ranges_.back().end())
      fail(ExitCode::failure, "RAM segments overlap at {:#x}", s.guest_physical);
    ranges_.push_back({s.guest_physical, s.size});
  }
  void* p = ::mmap(nullptr, file_size_, writable ? PROT_READ | PROT_WRITE : PROT_READ, MAP_SHARED, fd, 0);
  if (p == MAP_FAILED) fail_os(ExitCode::failure, "mmap guest RAM", errno);
  base_ = static_cast<std::byte*>(p);
}

SharedRamMemory::~SharedRamMemory() {
  if (base_) ::munmap(base_, file_size_);
}

std::byte* SharedRamMemory::locate(std::uint64_t address, std::uint64_t len) const {
  for (const auto& s : segments_) {
    PhysicalRange r{s.guest_physical, s.size};
    if (r.contains(address, len)) return base_ + s.file_offset + (address - s.guest_physical);
  }
  throw MemoryFault(address, len, "not backed by guest RAM");
}

void SharedRamMemory::read(std::uint64_t address, std::span<std::byte> out) const {
  std::memcpy(out.data(), locate(address, out.size()), out.size());
}

void SharedRamMemory::write(std::uint64_t address, std::span<const std::byte> data) {
  if (!writable_) fail(ExitCode::failure, "this view of guest RAM is read-only");
  std::memcpy(locate(address, data.size()), data.data(), data.size());
}

}  // namespace immortal
