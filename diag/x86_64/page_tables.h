// x86-64 address translation: 4-level and 5-level page-table walks from a CR3 value, with 1 GiB
// and 2 MiB pages. Tables are read through PhysicalMemory; a table missing from memory throws
// MemoryFault, a non-present entry is "not mapped" (nullopt).
#pragma once

#include "memory/physical_memory.h"

#include <cstdint>
#include <optional>

namespace immortal::x86_64 {

inline constexpr std::uint64_t kStartKernelMap = 0xffffffff80000000ull;  // __START_KERNEL_map
inline constexpr std::uint64_t kEntryAddressMask = 0x000ffffffffff000ull;

// page_size, when given, receives the size of the page that maps vaddr (4 KiB, 2 MiB or 1 GiB).
std::optional<std::uint64_t> translate(const PhysicalMemory& memory, std::uint64_t cr3, std::uint64_t vaddr,
                                       bool five_level, std::uint64_t* page_size = nullptr);

}  // namespace immortal::x86_64
