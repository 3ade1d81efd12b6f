// Which slab object an address lies in, read from the kernel's own struct page / struct slab
// (SLUB): the object's start and size and its cache's name. The lock search uses it to read "the
// object the code was working on" whole, no more; VMCOREINFO says where struct page fields are
// and how a slab page is marked (PG_slab, or the slab page type from 6.10), BTF the layout of
// struct slab and struct kmem_cache.
#pragma once

#include "kernel/kernel.h"
#include "kernel/page_type.h"

#include <cstdint>
#include <optional>
#include <string>

namespace immortal {

struct SlabObject {
  std::uint64_t start = 0;   // kernel virtual address of the object
  std::uint64_t size = 0;    // the cache's object_size (what its user asked for)
  std::string cache;         // "kmalloc-512", "inode_cache", …
};

class SlabLookup {
 public:
  // Nullopt (with why) when the kernel lacks what is needed: then no address is a slab object.
  static std::optional<SlabLookup> from_kernel(const Kernel& kernel, std::string* why);
  // The object containing address, if address lies in a slab page of the direct map. Never
  // throws: guest memory that does not add up (a cache of size 0, an object beyond its slab)
  // is not an object.
  std::optional<SlabObject> object_at(std::uint64_t address) const;

 private:
  explicit SlabLookup(const Kernel& kernel) : kernel_(&kernel) {}
  const Kernel* kernel_;
  std::uint64_t vmemmap_ = 0, page_size_ = 64, page_offset_ = 0, memory_end_ = 0;
  std::uint64_t off_flags_ = 0, off_compound_head_ = 8;
  std::uint64_t off_mapcount_ = 0, slab_bit_ = 0;
  std::optional<PageType> slab_type_;  // 6.10 on, instead of slab_bit_
  std::uint64_t off_slab_cache_ = 0, off_size_ = 0, off_object_size_ = 0, off_red_left_ = 0, off_name_ = 0;
  bool has_red_left_ = false;
};

}  // namespace immortal
