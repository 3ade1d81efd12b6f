#include "kernel/page_type.h"

#include <string>

namespace immortal {

namespace {
constexpr std::uint32_t kPageTypeBase = 0xf0000000;  // PAGE_TYPE_BASE up to 6.11
constexpr std::uint32_t kTopByte = 0xff000000;
constexpr std::uint32_t kFirstTopByteType = 0xf0;    // PGTY_buddy, the first of enum pagetype
}  // namespace

std::optional<PageType> PageType::from_exported(std::int64_t value) {
  if (value < INT32_MIN || value > UINT32_MAX) return std::nullopt;
  auto v = static_cast<std::uint32_t>(value);
  if ((v & ~kTopByte) == 0) {
    // 6.12 on: a whole top byte, one of PGTY_buddy (0xf0) … PGTY_mapcount_underflow (0xff, not a type).
    std::uint32_t type = v >> 24;
    if (type < kFirstTopByteType || type == 0xff) return std::nullopt;
    return PageType(kTopByte, v);
  }
  // Up to 6.11: ~flag, one bit below the base.
  std::uint32_t flag = ~v;
  if (flag == 0 || (flag & (flag - 1)) != 0 || (flag & kPageTypeBase)) return std::nullopt;
  return PageType(kPageTypeBase | flag, kPageTypeBase);
}

std::optional<PageType> PageType::of_kernel(const Vmcoreinfo& vi, const char* name) {
  auto text = vi.get(std::string("NUMBER(PAGE_") + name + "_MAPCOUNT_VALUE)");
  if (!text) return std::nullopt;
  try {
    std::size_t used = 0;
    long long v = std::stoll(*text, &used, 0);
    if (used != text->size()) return std::nullopt;
    return from_exported(v);
  } catch (const std::exception&) {
    return std::nullopt;
  }
}

}  // namespace immortal
