#include "kernel/image_symbols.h"

#include "base/content_digest.h"
#include "base/error.h"

#include <fmt/format.h>

#include <sys/mman.h>

#include <algorithm>
#include <bit>
#include <cstring>

namespace immortal {

namespace {

constexpr char kMagic[8] = {'I', 'M', 'M', 'S', 'Y', 'M', 'S', '1'};
constexpr std::size_t kHeader = 64;
constexpr std::uint32_t kEmpty = 0xffffffff;
constexpr std::size_t kMaxCount = 4'000'000;
constexpr std::size_t kMaxSlots = std::size_t{1} << 24;

std::uint32_t get_u32(const std::uint8_t* p) {
  std::uint32_t v;
  std::memcpy(&v, p, 4);
  return v;
}
std::uint64_t get_u64(const std::uint8_t* p) {
  std::uint64_t v;
  std::memcpy(&v, p, 8);
  return v;
}
void put_u32(std::uint8_t* p, std::uint32_t v) { std::memcpy(p, &v, 4); }
void put_u64(std::uint8_t* p, std::uint64_t v) { std::memcpy(p, &v, 8); }

// Pages of its own for a block built here: freed, they go back to the kernel at once (a heap
// chunk of a few MiB may stay with the allocator for the process's life).
struct AnonymousPages {
  void* at = MAP_FAILED;
  std::size_t bytes = 0;
  explicit AnonymousPages(std::size_t n) : bytes(n) {
    at = ::mmap(nullptr, n, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (at == MAP_FAILED) fail_os(ExitCode::failure, "map memory for the kernel's symbols", errno);
  }
  ~AnonymousPages() {
    if (at != MAP_FAILED) ::munmap(at, bytes);
  }
  AnonymousPages(const AnonymousPages&) = delete;
  AnonymousPages& operator=(const AnonymousPages&) = delete;
};

std::size_t slots_for(std::size_t count) {
  std::size_t slots = 16;  // at most half full: probes stay short, and one is always free
  while (slots < 2 * count) slots <<= 1;
  return slots;
}

}  // namespace

std::uint64_t symbol_name_hash(std::string_view name) {
  std::uint64_t h = 0xcbf29ce484222325ull;
  for (char c : name) {
    h ^= static_cast<unsigned char>(c);
    h *= 0x100000001b3ull;
  }
  return h;
}

std::shared_ptr<const ImageSymbols> ImageSymbols::build(const std::vector<Input>& symbols, std::uint64_t& base,
                                                        std::vector<std::size_t>& left_out) {
  base = 0;
  if (symbols.empty()) return nullptr;
  base = std::min_element(symbols.begin(), symbols.end(), [](const Input& a, const Input& b) {
           return a.address < b.address;
         })->address;
  // In address order (stable: the first of equal addresses stays first, as kallsyms lists them).
  std::vector<std::uint32_t> order;
  order.reserve(std::min(symbols.size(), kMaxCount));
  std::size_t names_bytes = 0;
  for (std::size_t i = 0; i < symbols.size(); ++i) {
    if (symbols[i].address - base > 0xffffffffull || order.size() >= kMaxCount) {
      left_out.push_back(i);
      continue;
    }
    order.push_back(static_cast<std::uint32_t>(i));
    names_bytes += std::min(symbols[i].name.size(), kMaxName) + 3;
  }
  if (order.empty()) return nullptr;
  auto by_address = [&](std::uint32_t a, std::uint32_t b) { return symbols[a].address < symbols[b].address; };
  if (!std::is_sorted(order.begin(), order.end(), by_address)) std::stable_sort(order.begin(), order.end(), by_address);

  const std::size_t count = order.size(), slots = slots_for(count);
  const std::size_t total = kHeader + 8 * count + 4 * slots + names_bytes;
  auto pages = std::make_shared<AnonymousPages>(total);
  auto* out = static_cast<std::uint8_t*>(pages->at);
  std::memcpy(out, kMagic, sizeof kMagic);
  put_u32(out + 8, kVersion);
  put_u32(out + 12, static_cast<std::uint32_t>(count));
  put_u32(out + 16, static_cast<std::uint32_t>(slots));
  put_u64(out + 24, names_bytes);
  std::uint8_t* entries = out + kHeader;
  std::uint8_t* slot_at = entries + 8 * count;
  char* names = reinterpret_cast<char*>(slot_at + 4 * slots);
  std::size_t next = 0;
  for (std::size_t k = 0; k < count; ++k) {
    const Input& s = symbols[order[k]];
    std::string_view name = s.name.substr(0, kMaxName);
    names[next] = static_cast<char>(name.size() & 0xff);
    names[next + 1] = static_cast<char>(name.size() >> 8);
    names[next + 2] = s.type;
    std::memcpy(names + next + 3, name.data(), name.size());
    put_u32(entries + 8 * k, static_cast<std::uint32_t>(s.address - base));
    put_u32(entries + 8 * k + 4, static_cast<std::uint32_t>(next + 3));
    next += name.size() + 3;
  }
  std::memset(slot_at, 0xff, 4 * slots);
  std::shared_ptr<ImageSymbols> block(new ImageSymbols);
  block->bytes_ = {out, total};
  block->entries_ = entries;
  block->slots_ = slot_at;
  block->names_ = names;
  block->count_ = count;
  block->slot_count_ = slots;
  block->names_bytes_ = names_bytes;
  const std::size_t mask = slots - 1;
  for (std::size_t k = 0; k < count; ++k) {
    std::string_view name = block->at(k).name;
    for (std::size_t at = symbol_name_hash(name) & mask;; at = (at + 1) & mask) {
      std::uint32_t held = get_u32(slot_at + 4 * at);
      if (held == kEmpty) {
        put_u32(slot_at + 4 * at, static_cast<std::uint32_t>(k));
        break;
      }
      if (block->at(held).name == name) break;  // the first definition stays
    }
  }
  ::mprotect(out, total, PROT_READ);  // shared by every table copied from this one: never written again
  block->keeper_ = std::move(pages);
  return block;
}

std::shared_ptr<const ImageSymbols> ImageSymbols::view(std::span<const std::uint8_t> bytes,
                                                       std::shared_ptr<const void> keeper, std::string* why) {
  auto refuse = [&](std::string reason) -> std::shared_ptr<const ImageSymbols> {
    if (why) *why = std::move(reason);
    return nullptr;
  };
  if (bytes.size() < kHeader || std::memcmp(bytes.data(), kMagic, sizeof kMagic) != 0)
    return refuse("not a block of kernel image symbols (no header)");
  const std::uint8_t* p = bytes.data();
  if (get_u32(p + 8) != kVersion) return refuse(fmt::format("kernel image symbols of version {}, not {}", get_u32(p + 8), kVersion));
  const std::uint64_t count = get_u32(p + 12), slots = get_u32(p + 16), names_bytes = get_u64(p + 24);
  if (count == 0 || count > kMaxCount || slots > kMaxSlots || !std::has_single_bit(slots) || slots <= count)
    return refuse(fmt::format("kernel image symbols: {} symbols in {} hash slots", count, slots));
  if (names_bytes > bytes.size() || kHeader + 8 * count + 4 * slots + names_bytes > bytes.size())
    return refuse("kernel image symbols: the sizes in the header do not fit in the block");
  std::shared_ptr<ImageSymbols> block(new ImageSymbols);
  block->bytes_ = bytes.first(kHeader + 8 * count + 4 * slots + names_bytes);  // a window's padding after it
  block->entries_ = p + kHeader;
  block->slots_ = block->entries_ + 8 * count;
  block->names_ = reinterpret_cast<const char*>(block->slots_ + 4 * slots);
  block->count_ = count;
  block->slot_count_ = slots;
  block->names_bytes_ = names_bytes;
  // Everything a lookup relies on, once: names inside the block, offsets in order, and hash slots
  // that name symbols and leave at least one free (a probe ends).
  std::uint32_t last = 0;
  for (std::size_t i = 0; i < count; ++i) {
    std::uint32_t offset = block->offset_of(i), name = block->name_of(i);
    if (offset < last) return refuse(fmt::format("kernel image symbols: symbol {} is out of order", i));
    last = offset;
    if (name < 3 || name > names_bytes) return refuse(fmt::format("kernel image symbols: symbol {}'s name is outside the block", i));
    std::size_t length = static_cast<unsigned char>(block->names_[name - 3]) |
                         static_cast<std::size_t>(static_cast<unsigned char>(block->names_[name - 2])) << 8;
    if (length == 0 || length > names_bytes - name)
      return refuse(fmt::format("kernel image symbols: symbol {}'s name is outside the block", i));
  }
  std::size_t used = 0;
  for (std::size_t s = 0; s < slots; ++s) {
    std::uint32_t held = get_u32(block->slots_ + 4 * s);
    if (held == kEmpty) continue;
    if (held >= count || ++used > count) return refuse("kernel image symbols: a hash slot names no symbol");
  }
  block->keeper_ = std::move(keeper);
  return block;
}

std::uint32_t ImageSymbols::offset_of(std::size_t i) const { return get_u32(entries_ + 8 * i); }
std::uint32_t ImageSymbols::name_of(std::size_t i) const { return get_u32(entries_ + 8 * i + 4); }

ImageSymbols::Entry ImageSymbols::at(std::size_t i) const {
  std::uint32_t name = name_of(i);
  std::size_t length = static_cast<unsigned char>(names_[name - 3]) |
                       static_cast<std::size_t>(static_cast<unsigned char>(names_[name - 2])) << 8;
  return {offset_of(i), {names_ + name, length}, names_[name - 1]};
}

std::optional<std::size_t> ImageSymbols::above(std::uint64_t offset) const {
  // The first entry whose offset is greater.
  std::size_t lo = 0, hi = count_;
  while (lo < hi) {
    std::size_t mid = lo + (hi - lo) / 2;
    if (offset_of(mid) <= offset) lo = mid + 1;
    else hi = mid;
  }
  if (lo == count_) return std::nullopt;
  return lo;
}

std::optional<std::size_t> ImageSymbols::at_or_below(std::uint64_t offset) const {
  auto next = above(offset);
  std::size_t first_above = next ? *next : count_;
  if (first_above == 0) return std::nullopt;
  return first_above - 1;
}

std::optional<std::size_t> ImageSymbols::find(std::string_view name) const {
  if (!slot_count_) return std::nullopt;
  const std::size_t mask = slot_count_ - 1;
  std::size_t at = symbol_name_hash(name) & mask;
  for (std::size_t probes = 0; probes < slot_count_; ++probes, at = (at + 1) & mask) {
    std::uint32_t held = get_u32(slots_ + 4 * at);
    if (held == kEmpty) return std::nullopt;
    if (this->at(held).name == name) return held;
  }
  return std::nullopt;
}

const std::string& ImageSymbols::digest() const {
  std::call_once(digest_once_, [this] {
    digest_ = content_digest(bytes_);
  });
  return digest_;
}

}  // namespace immortal
