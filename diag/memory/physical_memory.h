// The PhysicalMemory seam: the bytes of a guest, addressed by guest-physical address.
//
// Implemented by the live shared RAM mapping of a running guest (shared_ram.h) and, in the
// introspection issue, by ELF core files. Everything above it (address translation, types,
// kernel readers) is the same for live repair and offline diagnosis.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <stdexcept>
#include <string>
#include <vector>

namespace immortal {

// A run of guest-physical addresses backed by memory: [start, start + size).
struct PhysicalRange {
  std::uint64_t start = 0;
  std::uint64_t size = 0;
  std::uint64_t end() const { return start + size; }
  bool contains(std::uint64_t addr, std::uint64_t len) const {
    return addr >= start && len <= size && addr - start <= size - len;
  }
};

// A read or write touched an address that no range backs. Carries the address so callers
// can report a partial result ("missing"), never a silent zero.
class MemoryFault : public std::runtime_error {
 public:
  MemoryFault(std::uint64_t address, std::uint64_t length, const std::string& why);
  std::uint64_t address() const { return address_; }
  std::uint64_t length() const { return length_; }

 private:
  std::uint64_t address_;
  std::uint64_t length_;
};

class PhysicalMemory {
 public:
  virtual ~PhysicalMemory() = default;

  // Where memory is, sorted by address, non-overlapping.
  virtual const std::vector<PhysicalRange>& ranges() const = 0;
  // Copies [address, address + out.size()) into out; throws MemoryFault for unbacked bytes.
  virtual void read(std::uint64_t address, std::span<std::byte> out) const = 0;
  // Live memory is writable; dumps are not (write throws MemoryFault).
  virtual bool writable() const = 0;
  virtual void write(std::uint64_t address, std::span<const std::byte> data) = 0;

  template <typename T>
  T read_value(std::uint64_t address) const {
    T value;
    read(address, std::as_writable_bytes(std::span(&value, 1)));
    return value;
  }
  std::uint64_t total_size() const;
};

}  // namespace immortal
