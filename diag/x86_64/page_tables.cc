#include "x86_64/page_tables.h"

namespace immortal::x86_64 {

std::optional<std::uint64_t> translate(const PhysicalMemory& memory, std::uint64_t cr3, std::uint64_t vaddr,
                                       bool five_level, std::uint64_t* page_size) {
  constexpr std::uint64_t kPresent = 1, kLarge = 1 << 7;
  std::uint64_t table = cr3 & kEntryAddressMask;
  int levels = five_level ? 5 : 4;
  for (int level = levels; level >= 1; --level) {
    int shift = 12 + 9 * (level - 1);
    std::uint64_t index = (vaddr >> shift) & 0x1ff;
    std::uint64_t entry = memory.read_value<std::uint64_t>(table + index * 8);
    if (!(entry & kPresent)) return std::nullopt;
    // A large page at the PDPT (1 GiB) or page-directory (2 MiB) level ends the walk.
    if ((level == 3 || level == 2) && (entry & kLarge)) {
      std::uint64_t page_mask = (1ull << shift) - 1;
      if (page_size) *page_size = page_mask + 1;
      return (entry & kEntryAddressMask & ~page_mask) | (vaddr & page_mask);
    }
    table = entry & kEntryAddressMask;
  }
  if (page_size) *page_size = 0x1000;
  return table | (vaddr & 0xfff);
}

}  // namespace immortal::x86_64
