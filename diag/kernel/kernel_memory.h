// The guest kernel's virtual address space over PhysicalMemory: reads by kernel virtual address
// through the kernel's own page tables (init_top_pgt), with translations cached per page.
// Works the same on live RAM and on dumps. Safe to read from several threads.
#pragma once

#include "memory/physical_memory.h"

#include <cstdint>
#include <mutex>
#include <optional>
#include <string>
#include <unordered_map>

namespace immortal {

struct KernelLayout {
  std::uint64_t page_table = 0;        // physical address of the top-level page table
  bool five_level = false;
  std::uint64_t phys_base = 0;         // __pa_symbol(x) = x - __START_KERNEL_map + phys_base
  std::uint64_t page_offset_base = 0;  // start of the direct map (randomised with KASLR)
  std::uint64_t kaslr_offset = 0;
};

class KernelMemory {
 public:
  KernelMemory(const PhysicalMemory& memory, KernelLayout layout) : memory_(memory), layout_(layout) {}

  // Throws MemoryFault (carrying the virtual address) for unmapped or missing bytes.
  void read(std::uint64_t vaddr, std::span<std::byte> out) const;
  template <typename T>
  T read_value(std::uint64_t vaddr) const {
    T value;
    read(vaddr, std::as_writable_bytes(std::span(&value, 1)));
    return value;
  }
  std::uint64_t read_u64(std::uint64_t vaddr) const { return read_value<std::uint64_t>(vaddr); }
  // Reads a NUL-terminated string of at most max bytes (the guest's bytes, as they are).
  std::string read_cstring(std::uint64_t vaddr, std::size_t max) const;
  std::optional<std::uint64_t> to_physical(std::uint64_t vaddr) const;
  // Where vaddr is mapped and how many bytes from it on the same page maps (to the end of a
  // 4 KiB, 2 MiB or 1 GiB page): one walk covers a large page. Not cached.
  struct Mapping {
    std::uint64_t physical = 0;
    std::uint64_t bytes = 0;
  };
  std::optional<Mapping> mapping_at(std::uint64_t vaddr) const;

  const KernelLayout& layout() const { return layout_; }
  // Live memory changes under us: vmalloc'd pages (task stacks, module text) are remapped as
  // tasks come and go. Call before reading a live guest again after it ran.
  void forget_translations() const {
    std::lock_guard lock(pages_mutex_);
    pages_.clear();
  }
  const PhysicalMemory& physical() const { return memory_; }

 private:
  const PhysicalMemory& memory_;
  KernelLayout layout_;
  // Translations may be looked up from two threads (the repair engine checks the kernel's code
  // beside the analysis): the cache has a lock.
  mutable std::mutex pages_mutex_;
  mutable std::unordered_map<std::uint64_t, std::uint64_t> pages_;  // virtual page → physical page
};

}  // namespace immortal
