// PhysicalMemory over a running guest's RAM: the shared memory file the hypervisor backs guest
// RAM with, mapped into our process. Reads and writes go straight to the guest's memory.
#pragma once

#include "base/unique_fd.h"
#include "memory/physical_memory.h"

namespace immortal {

// One guest-physical range and where it lives in the RAM file.
struct RamSegment {
  std::uint64_t guest_physical = 0;
  std::uint64_t file_offset = 0;
  std::uint64_t size = 0;
};

class SharedRamMemory final : public PhysicalMemory {
 public:
  // Maps file_size bytes of fd (shared; read-write unless writable is false, which the repair
  // agent uses: it never writes guest memory). Every segment must lie inside the file.
  SharedRamMemory(int fd, std::uint64_t file_size, std::vector<RamSegment> segments, bool writable = true);
  ~SharedRamMemory() override;
  SharedRamMemory(const SharedRamMemory&) = delete;
  SharedRamMemory& operator=(const SharedRamMemory&) = delete;

  const std::vector<PhysicalRange>& ranges() const override { return ranges_; }
  void read(std::uint64_t address, std::span<std::byte> out) const override;
  bool writable() const override { return writable_; }
  void write(std::uint64_t address, std::span<const std::byte> data) override;

 private:
  // Host pointer for [address, address+len) if one segment holds all of it, else throws.
  std::byte* locate(std::uint64_t address, std::uint64_t len) const;

  std::byte* base_ = nullptr;
  std::uint64_t file_size_ = 0;
  bool writable_ = true;
  std::vector<RamSegment> segments_;
  std::vector<PhysicalRange> ranges_;
};

}  // namespace immortal
