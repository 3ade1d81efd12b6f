#include "kernel/slab.h"

namespace immortal {

namespace {
constexpr std::uint64_t kPageShift = 12;
constexpr std::uint64_t kMaxSlabBytes = 4ull << 20;   // an order-10 slab at most
constexpr std::uint64_t kMaxObjectSize = 1ull << 20;  // bigger kmallocs come from the page allocator
constexpr std::size_t kMaxCacheName = 64;
}  // namespace

std::optional<SlabLookup> SlabLookup::from_kernel(const Kernel& kernel, std::string* why) {
  auto no = [&](const std::string& w) -> std::optional<SlabLookup> {
    if (why) *why = w;
    return std::nullopt;
  };
  if (!kernel.vmcoreinfo()) return no("no VMCOREINFO to say where struct page fields are");
  const Vmcoreinfo& vi = *kernel.vmcoreinfo();
  SlabLookup s(kernel);
  // A slab's head page says so by the PG_slab flag up to 6.9, by a page type from 6.10 on.
  auto slab = vi.number("PG_slab");
  auto flags = vi.offset("page.flags");
  auto mapcount = vi.offset("page._mapcount");
  auto size = vi.get("SIZE(page)");
  if (!flags || !size) return no("VMCOREINFO lacks struct page's layout");
  if (slab && *slab < 64) {
    s.slab_bit_ = 1ull << *slab;
  } else {
    s.slab_type_ = PageType::of_kernel(vi, "SLAB");
    if (!s.slab_type_ || !mapcount) return no("VMCOREINFO has neither PG_slab nor a usable PAGE_SLAB_MAPCOUNT_VALUE");
    s.off_mapcount_ = *mapcount;
  }
  s.off_flags_ = *flags;
  s.off_compound_head_ = vi.offset("page.compound_head").value_or(8);
  try {
    s.page_size_ = std::stoull(*size);
  } catch (const std::exception&) {
    return no("VMCOREINFO's SIZE(page) is not a number");
  }
  if (s.page_size_ < 32 || s.page_size_ > 256 || s.off_flags_ + 8 > s.page_size_ || s.off_compound_head_ + 8 > s.page_size_ ||
      s.off_mapcount_ + 4 > s.page_size_)
    return no("implausible struct page layout");
  auto vmemmap = kernel.symbols().address_of("vmemmap_base");
  auto page_offset = kernel.symbols().address_of("page_offset_base");
  if (!vmemmap || !page_offset) return no("the kernel has no vmemmap_base or page_offset_base");
  const auto& t = kernel.types();
  auto cache = t.field("slab", "slab_cache");
  auto stride = t.field("kmem_cache", "size");
  auto object = t.field("kmem_cache", "object_size");
  auto name = t.field("kmem_cache", "name");
  if (!cache || !stride || !object || !name) return no("the kernel's types lack struct slab or struct kmem_cache");
  s.off_slab_cache_ = cache->byte_offset();
  s.off_size_ = stride->byte_offset();
  s.off_object_size_ = object->byte_offset();
  s.off_name_ = name->byte_offset();
  if (auto red = t.field("kmem_cache", "red_left_pad")) {
    s.off_red_left_ = red->byte_offset();
    s.has_red_left_ = true;
  }
  try {
    s.vmemmap_ = kernel.memory().read_u64(*vmemmap);
    s.page_offset_ = kernel.memory().read_u64(*page_offset);
  } catch (const MemoryFault& e) {
    return no(std::string("cannot read the memory map's base: ") + e.what());
  }
  std::uint64_t top = 0;
  for (const auto& r : kernel.memory().physical().ranges()) top = std::max(top, r.end());
  s.memory_end_ = top;
  return s;
}

std::optional<SlabObject> SlabLookup::object_at(std::uint64_t address) const {
  if (address < page_offset_ || address - page_offset_ >= memory_end_) return std::nullopt;
  const auto& m = kernel_->memory();
  try {
    std::uint64_t pfn = (address - page_offset_) >> kPageShift;
    std::uint64_t page = vmemmap_ + pfn * page_size_;
    // A slab of several pages is a compound page: its head holds the slab's fields.
    std::uint64_t compound = m.read_u64(page + off_compound_head_);
    std::uint64_t head = (compound & 1) ? compound - 1 : page;
    if (head < vmemmap_ || (head - vmemmap_) % page_size_ != 0 || head > page) return std::nullopt;
    std::uint64_t head_pfn = (head - vmemmap_) / page_size_;
    if ((pfn - head_pfn) << kPageShift >= kMaxSlabBytes) return std::nullopt;
    bool is_slab = slab_type_ ? slab_type_->matches(m.read_value<std::uint32_t>(head + off_mapcount_))
                              : (m.read_u64(head + off_flags_) & slab_bit_) != 0;
    if (!is_slab) return std::nullopt;
    std::uint64_t cache = m.read_u64(head + off_slab_cache_);
    auto stride = m.read_value<std::uint32_t>(cache + off_size_);
    auto size = m.read_value<std::uint32_t>(cache + off_object_size_);
    std::uint32_t red = has_red_left_ ? m.read_value<std::uint32_t>(cache + off_red_left_) : 0;
    if (stride == 0 || size == 0 || size > stride || stride > kMaxObjectSize || red >= stride) return std::nullopt;
    std::uint64_t base = page_offset_ + (head_pfn << kPageShift);
    std::uint64_t index = (address - base) / stride;
    std::uint64_t start = base + index * stride + red;
    if (address < start || address - start >= size) return std::nullopt;  // in padding or metadata
    std::string name;
    try {
      name = m.read_cstring(m.read_u64(cache + off_name_), kMaxCacheName);
    } catch (const MemoryFault&) {
    }
    for (char& c : name)
      if (c < 0x20 || c > 0x7e) c = '?';
    return SlabObject{start, size, name.empty() ? std::string("slab") : std::move(name)};
  } catch (const MemoryFault&) {
    return std::nullopt;
  }
}

}  // namespace immortal
