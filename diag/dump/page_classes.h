// Which guest pages a crash dump needs, read from the kernel's own `struct page` array — the
// classes makedumpfile's dump level 31 leaves out (free, user, page-cache pages), so a dump
// holds the kernel's footprint instead of the guest's RAM size. Field offsets and flag numbers
// come from VMCOREINFO (the kernel exports them for exactly this), vmemmap_base from the kernel.
#pragma once

#include "kernel/kernel.h"
#include "kernel/page_type.h"

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace immortal {

enum class PageClass : std::uint8_t {
  kernel,  // kept: kernel text and data, slab, page tables, stacks, anything not below
  zero,    // all zero bytes (found when copying)
  free,    // in the buddy allocator, or offline
  user,    // anonymous process memory
  cache,   // page cache (file and shmem pages on the LRU, swap cache)
};
constexpr int kPageClassCount = 5;
const char* to_string(PageClass c);

class PageClassifier {
 public:
  // Nullopt (with why) when the kernel lacks what is needed (no VMCOREINFO, no vmemmap_base):
  // then every page counts as kernel — a larger dump, never a wrong one.
  static std::optional<PageClassifier> from_kernel(const Kernel& kernel, std::string* why);
  // The same from its parts (the page-class agent has no profile): the kernel's memory, its
  // VMCOREINFO and the address of its vmemmap_base variable (read here, as the guest has it).
  static std::optional<PageClassifier> from_parts(const KernelMemory& memory, const Vmcoreinfo& vmcoreinfo,
                                                  std::uint64_t vmemmap_base_symbol, std::string* why);

  // Classes of the pages [first_pfn, first_pfn + out.size()). Pages whose struct page cannot be
  // read stay `kernel`.
  void classify(std::uint64_t first_pfn, std::vector<PageClass>& out) const;

 private:
  explicit PageClassifier(const KernelMemory& memory) : memory_(&memory) {}
  const KernelMemory* memory_;
  std::uint64_t vmemmap_ = 0, page_size_ = 64;
  std::uint64_t off_flags_ = 0, off_mapping_ = 24, off_mapcount_ = 48, off_private_ = 40, off_compound_head_ = 8;
  std::uint64_t lru_mask_ = 0, swapcache_mask_ = 0;
  std::optional<PageType> buddy_, offline_;
};

}  // namespace immortal
