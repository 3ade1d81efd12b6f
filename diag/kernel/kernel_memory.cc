#include "kernel/kernel_memory.h"

#include "x86_64/page_tables.h"

#include <algorithm>

namespace immortal {

namespace {
constexpr std::size_t kMaxCachedPages = 1 << 18;
}

std::optional<std::uint64_t> KernelMemory::to_physical(std::uint64_t vaddr) const {
  std::uint64_t page = vaddr & ~0xfffull;
  {
    std::lock_guard lock(pages_mutex_);
    if (auto it = pages_.find(page); it != pages_.end()) return it->second | (vaddr & 0xfff);
  }
  std::optional<std::uint64_t> phys;
  try {
    phys = x86_64::translate(memory_, layout_.page_table, page, layout_.five_level);
  } catch (const MemoryFault&) {
    return std::nullopt;  // a page table missing from the dump: the address is unreadable
  }
  if (!phys) return std::nullopt;
  std::lock_guard lock(pages_mutex_);
  if (pages_.size() >= kMaxCachedPages) pages_.clear();
  pages_.emplace(page, *phys & ~0xfffull);
  return (*phys & ~0xfffull) | (vaddr & 0xfff);
}

std::optional<KernelMemory::Mapping> KernelMemory::mapping_at(std::uint64_t vaddr) const {
  std::uint64_t size = 0;
  std::optional<std::uint64_t> phys;
  try {
    phys = x86_64::translate(memory_, layout_.page_table, vaddr, layout_.five_level, &size);
  } catch (const MemoryFault&) {
    return std::nullopt;
  }
  if (!phys || !size) return std::nullopt;
  return Mapping{*phys, size - (vaddr & (size - 1))};
}

void KernelMemory::read(std::uint64_t vaddr, std::span<std::byte> out) const {
  std::size_t done = 0;
  while (done < out.size()) {
    std::uint64_t addr = vaddr + done;
    std::size_t n = std::min<std::size_t>(out.size() - done, 0x1000 - (addr & 0xfff));
    auto phys = to_physical(addr);
    if (!phys) throw MemoryFault(addr, n, "kernel virtual address not mapped");
    memory_.read(*phys, out.subspan(done, n));
    done += n;
  }
}

std::string KernelMemory::read_cstring(std::uint64_t vaddr, std::size_t max) const {
  std::string out;
  char buf[64];
  while (out.size() < max) {
    std::size_t n = std::min<std::size_t>({sizeof buf, max - out.size(), 0x1000 - ((vaddr + out.size()) & 0xfff)});
    read(vaddr + out.size(), std::as_writable_bytes(std::span(buf, n)));
    for (std::size_t i = 0; i < n; ++i) {
      if (buf[i] == '\0') return out;
      out.push_back(buf[i]);
    }
  }
  return out;
}

}  // namespace immortal
