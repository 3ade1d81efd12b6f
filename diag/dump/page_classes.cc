#include "dump/page_classes.h"

#include <algorithm>
#include <cstring>

namespace immortal {

namespace {
constexpr std::uint64_t kPageMappingAnon = 1;
constexpr std::uint64_t kMaxOrder = 20;              // MAX_ORDER is 11 on x86-64; bound guest values
constexpr std::uint64_t kChunkPages = 64;            // struct pages read at once (one 4 KiB page of them)
}  // namespace

const char* to_string(PageClass c) {
  switch (c) {
    case PageClass::kernel: return "kernel";
    case PageClass::zero: return "zero";
    case PageClass::free: return "free";
    case PageClass::user: return "user";
    case PageClass::cache: return "cache";
  }
  return "?";
}

std::optional<PageClassifier> PageClassifier::from_kernel(const Kernel& kernel, std::string* why) {
  if (!kernel.vmcoreinfo()) {
    if (why) *why = "no VMCOREINFO to say where struct page fields are";
    return std::nullopt;
  }
  auto base = kernel.symbols().address_of("vmemmap_base");
  if (!base) {
    if (why) *why = "the kernel has no vmemmap_base symbol";
    return std::nullopt;
  }
  return from_parts(kernel.memory(), *kernel.vmcoreinfo(), *base, why);
}

std::optional<PageClassifier> PageClassifier::from_parts(const KernelMemory& memory, const Vmcoreinfo& vi,
                                                         std::uint64_t vmemmap_base_symbol, std::string* why) {
  auto no = [&](const std::string& w) -> std::optional<PageClassifier> {
    if (why) *why = w;
    return std::nullopt;
  };
  PageClassifier c(memory);
  try {
    c.vmemmap_ = memory.read_u64(vmemmap_base_symbol);
  } catch (const MemoryFault& e) {
    return no(std::string("cannot read vmemmap_base: ") + e.what());
  }
  auto size = vi.get("SIZE(page)");
  auto need = [&](const char* key, std::uint64_t& out) {
    auto v = vi.offset(key);
    if (!v) return false;
    out = *v;
    return true;
  };
  if (!size || !need("page.flags", c.off_flags_) || !need("page.mapping", c.off_mapping_) ||
      !need("page._mapcount", c.off_mapcount_) || !need("page.private", c.off_private_))
    return no("VMCOREINFO lacks struct page's size or offsets");
  need("page.compound_head", c.off_compound_head_);
  try {
    c.page_size_ = std::stoull(*size);
  } catch (const std::exception&) {
    return no("VMCOREINFO's SIZE(page) is not a number");
  }
  if (c.page_size_ < 32 || c.page_size_ > 256 || 4096 % c.page_size_ != 0) return no("implausible SIZE(page)");
  // Each field within struct page for its own width (a negative or huge offset from a forged
  // VMCOREINFO must not send a read outside the chunk; `off + width` could wrap).
  auto inside = [&](std::uint64_t off, std::uint64_t width) { return off <= c.page_size_ && width <= c.page_size_ - off; };
  if (!inside(c.off_flags_, 8) || !inside(c.off_mapping_, 8) || !inside(c.off_private_, 8) ||
      !inside(c.off_compound_head_, 8) || !inside(c.off_mapcount_, 4))
    return no("struct page offsets outside struct page");
  auto bit = [&](const char* name) -> std::uint64_t {
    auto n = vi.number(name);
    return n && *n < 64 ? 1ull << *n : 0;
  };
  c.lru_mask_ = bit("PG_lru");
  c.swapcache_mask_ = bit("PG_swapcache");
  if (!c.lru_mask_) return no("VMCOREINFO lacks PG_lru");
  // Free blocks are the buddy page type; its encoding changed in 6.12 (kernel/page_type.h).
  c.buddy_ = PageType::of_kernel(vi, "BUDDY");
  if (!c.buddy_) return no("VMCOREINFO lacks PAGE_BUDDY_MAPCOUNT_VALUE, or its value is neither encoding");
  c.offline_ = PageType::of_kernel(vi, "OFFLINE");
  return c;
}

void PageClassifier::classify(std::uint64_t first_pfn, std::vector<PageClass>& out) const {
  std::fill(out.begin(), out.end(), PageClass::kernel);
  std::vector<std::byte> chunk(kChunkPages * page_size_);
  auto u64 = [&](std::size_t at) {
    std::uint64_t v;
    std::memcpy(&v, chunk.data() + at, 8);
    return v;
  };
  auto u32 = [&](std::size_t at) {
    std::uint32_t v;
    std::memcpy(&v, chunk.data() + at, 4);
    return v;
  };
  std::uint64_t head_pfn = ~0ull;  // the compound page the tail pages below belong to
  PageClass head_class = PageClass::kernel;
  std::size_t i = 0;
  while (i < out.size()) {
    std::size_t n = std::min<std::size_t>(kChunkPages, out.size() - i);
    // Read whole chunks aligned to kChunkPages so each read stays in one page of vmemmap.
    std::uint64_t pfn0 = first_pfn + i;
    std::size_t lead = pfn0 % kChunkPages;
    n = std::min<std::size_t>(n, kChunkPages - lead);
    if (std::all_of(out.begin() + static_cast<long>(i), out.begin() + static_cast<long>(i + n),
                    [](PageClass c) { return c == PageClass::free; })) {
      i += n;  // inside a free block found earlier
      continue;
    }
    try {
      memory_->read(vmemmap_ + pfn0 * page_size_, std::span(chunk.data(), n * page_size_));
    } catch (const MemoryFault&) {
      i += n;  // no struct pages here (a hole): keep the pages
      continue;
    }
    for (std::size_t k = 0; k < n; ++k, ++i) {
      if (out[i] != PageClass::kernel) continue;  // already covered by a free block
      std::size_t at = k * page_size_;
      std::uint64_t pfn = first_pfn + i;
      std::uint64_t compound = u64(at + off_compound_head_);
      if (compound & 1) {
        // A tail page: it shares its head's fate (a THP is all user memory or all cache).
        std::uint64_t head = compound - 1;
        std::uint64_t hp = head >= vmemmap_ ? (head - vmemmap_) / page_size_ : ~0ull;
        if (hp == head_pfn) out[i] = head_class;
        continue;
      }
      std::uint32_t mapcount = u32(at + off_mapcount_);
      std::uint64_t flags = u64(at + off_flags_), mapping = u64(at + off_mapping_);
      PageClass c = PageClass::kernel;
      if (buddy_->matches(mapcount)) {
        // A free block's first page; its order is in page->private.
        std::uint64_t order = std::min<std::uint64_t>(u64(at + off_private_), kMaxOrder);
        std::uint64_t end = std::min<std::uint64_t>(out.size(), i + (1ull << order));
        for (std::uint64_t j = i; j < end; ++j) out[j] = PageClass::free;
        continue;
      } else if (offline_ && offline_->matches(mapcount)) {
        c = PageClass::free;
      } else if (mapping & kPageMappingAnon) {
        c = PageClass::user;
      } else if (mapping && (flags & (lru_mask_ | swapcache_mask_))) {
        c = PageClass::cache;
      }
      out[i] = c;
      head_pfn = pfn;
      head_class = c;
    }
  }
}

}  // namespace immortal
