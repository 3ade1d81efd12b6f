// Page types: how a struct page says it is a free buddy block, offline, or a slab. Linux keeps
// them in the word it shares with _mapcount and exports each one for dump readers as
// VMCOREINFO's NUMBER(PAGE_<TYPE>_MAPCOUNT_VALUE). Two encodings exist, told apart by the value:
//   up to 6.11   the value is ~flag: a page has the type when that one bit is clear and the
//                top nibble (PAGE_TYPE_BASE) is all ones (6.1: buddy = ~0x80 = -129);
//   6.12 on      the type is the word's top byte (enum pagetype: PGTY_buddy = 0xf0, …) and the
//                value is PGTY << 24, the low 24 bits free for the type's own data.
// 6.10 also moved PG_slab out of page->flags into the page types (PAGE_SLAB_MAPCOUNT_VALUE).
#pragma once

#include "kernel/vmcoreinfo.h"

#include <cstdint>
#include <optional>

namespace immortal {

class PageType {
 public:
  // Nullopt for a value neither encoding can produce (guest data is untrusted).
  static std::optional<PageType> from_exported(std::int64_t value);
  // NUMBER(PAGE_<name>_MAPCOUNT_VALUE) of this VMCOREINFO, e.g. of_kernel(vi, "BUDDY").
  static std::optional<PageType> of_kernel(const Vmcoreinfo& vi, const char* name);

  // Whether the page whose _mapcount/page_type word is this has the type.
  bool matches(std::uint32_t word) const { return (word & mask_) == value_; }

 private:
  PageType(std::uint32_t mask, std::uint32_t value) : mask_(mask), value_(value) {}
  std::uint32_t mask_, value_;
};

}  // namespace immortal
