#include "memory/physical_memory.h"

#include <fmt/format.h>

namespace immortal {

MemoryFault::MemoryFault(std::uint64_t address, std::uint64_t length, const std::string& why)
    : std::runtime_error(fmt::format("guest-physical {:#x}+{:#x}: {}", address, length, why)),
      address_(address),
      length_(length) {}

std::uint64_t PhysicalMemory::total_size() const {
  std::uint64_t total = 0;
  for (const auto& r : ranges()) total += r.size;
  return total;
}

}  // namespace immortal
