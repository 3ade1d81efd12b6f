#include "dump/panic_line.h"

#include "base/error.h"

#include <algorithm>
#include <fmt/format.h>

#include <cstring>
#include <optional>

namespace immortal {

namespace {

constexpr int kStateShift = 62;  // kernel/printk/printk_ringbuffer.h
constexpr std::uint64_t kIdMask = ~(3ull << kStateShift);
constexpr std::uint64_t kFinalized = 2;
constexpr std::uint8_t kLogNewline = 2;  // enum printk_info_flags
constexpr std::size_t kMaxMessage = 1024;  // panic()'s buffer

// The printk ring's arrays and heads (kernel/printk/printk_ringbuffer.h), as appending a record
// needs them. nullopt for implausible sizes; MemoryFault or Error when they cannot be read.
struct Ring {
  std::uint64_t descs, infos, data;
  std::uint64_t head_id_at, head_id, tail_id;        // ids without their state bits
  std::uint64_t head_lpos_at, head_lpos, tail_lpos;
  std::uint32_t size_bits;
  std::uint64_t count, size;                         // descriptors; bytes of the data ring
  std::uint64_t next_id() const { return (head_id + 1) & kIdMask; }
  // Where descriptor (or info) `id` lives, for an array element of `element_size` bytes at `array`.
  std::uint64_t slot_of(std::uint64_t array, std::uint64_t id, std::uint64_t element_size) const {
    return array + (id & (count - 1)) * element_size;
  }
  // Where the data ring's logical position `lpos` lives.
  std::uint64_t data_at(std::uint64_t lpos) const { return data + (lpos & (size - 1)); }
};

std::optional<Ring> read_ring(const Kernel& kernel) {
  const auto& m = kernel.memory();
  const auto& t = kernel.types();
  std::uint64_t rb = m.read_u64(kernel.symbol("prb"));
  std::uint64_t desc_ring = rb + t.offset_of("printk_ringbuffer", "desc_ring");
  std::uint64_t data_ring = rb + t.offset_of("printk_ringbuffer", "text_data_ring");
  auto count_bits = m.read_value<std::uint32_t>(desc_ring + t.offset_of("prb_desc_ring", "count_bits"));
  auto size_bits = m.read_value<std::uint32_t>(data_ring + t.offset_of("prb_data_ring", "size_bits"));
  if (count_bits > 24 || size_bits > 30 || size_bits < 4) return std::nullopt;
  Ring r{};
  r.descs = m.read_u64(desc_ring + t.offset_of("prb_desc_ring", "descs"));
  r.infos = m.read_u64(desc_ring + t.offset_of("prb_desc_ring", "infos"));
  r.head_id_at = desc_ring + t.offset_of("prb_desc_ring", "head_id");
  r.head_id = m.read_u64(r.head_id_at) & kIdMask;
  r.tail_id = m.read_u64(desc_ring + t.offset_of("prb_desc_ring", "tail_id")) & kIdMask;
  r.data = m.read_u64(data_ring + t.offset_of("prb_data_ring", "data"));
  r.head_lpos_at = data_ring + t.offset_of("prb_data_ring", "head_lpos");
  r.head_lpos = m.read_u64(r.head_lpos_at);
  r.tail_lpos = m.read_u64(data_ring + t.offset_of("prb_data_ring", "tail_lpos"));
  r.size_bits = size_bits;
  r.count = 1ull << count_bits;
  r.size = 1ull << size_bits;
  return r;
}

std::string guest_string(const Kernel& kernel, std::uint64_t address) {
  if (address < kKernelSpaceStart) return "(efault)";
  try {
    std::string s = kernel.memory().read_cstring(address, 256);
    for (char& c : s)
      if (c < 0x20 || c > 0x7e) c = '?';
    return s;
  } catch (const MemoryFault&) {
    return "(efault)";
  }
}

}  // namespace

std::string format_panic_message(const Kernel& kernel, const X86Registers& r) {
  std::string format;
  try {
    format = kernel.memory().read_cstring(r.rdi, kMaxMessage);
  } catch (const MemoryFault&) {
    return "(unreadable panic message)";
  }
  const std::uint64_t args[] = {r.rsi, r.rdx, r.rcx, r.r8, r.r9};
  std::size_t next = 0;
  std::string out;
  for (std::size_t i = 0; i < format.size() && out.size() < kMaxMessage; ++i) {
    char c = format[i];
    if (c != '%') {
      out += (c >= 0x20 && c <= 0x7e) || c == '\n' ? c : '?';
      continue;
    }
    if (i + 1 < format.size() && format[i + 1] == '%') {
      out += '%';
      ++i;
      continue;
    }
    // Flags, width, precision, length: skipped (the message is for people, not for alignment).
    std::size_t j = i + 1;
    while (j < format.size() && std::strchr("-+ #0123456789.*", format[j])) ++j;
    int longs = 0;
    bool half = false;
    while (j < format.size() && std::strchr("lhzLjt", format[j])) {
      if (format[j] == 'l' || format[j] == 'z' || format[j] == 'L' || format[j] == 'j' || format[j] == 't') ++longs;
      if (format[j] == 'h') half = true;
      ++j;
    }
    if (j >= format.size()) break;
    char conv = format[j];
    i = j;
    if (next >= std::size(args)) {  // further arguments are on the stack: not worth guessing
      out += "?";
      continue;
    }
    std::uint64_t v = args[next++];
    if (!longs) v &= 0xffffffffull;
    if (half) v &= 0xffff;
    switch (conv) {
      case 'd':
      case 'i':
        out += longs ? std::to_string(static_cast<std::int64_t>(v)) : std::to_string(static_cast<std::int32_t>(v));
        break;
      case 'u': out += std::to_string(v); break;
      case 'x': out += fmt::format("{:x}", v); break;
      case 'X': out += fmt::format("{:X}", v); break;
      case 'c': out += static_cast<char>(v >= 0x20 && v <= 0x7e ? v : '?'); break;
      case 's': out += guest_string(kernel, args[next - 1]); break;
      case 'p':
        // %pS and friends: a symbol; any other %p extension: the pointer.
        if (i + 1 < format.size() && (format[i + 1] == 'S' || format[i + 1] == 's' || format[i + 1] == 'B')) {
          out += kernel.symbols().describe(args[next - 1]);
          ++i;
        } else {
          while (i + 1 < format.size() && std::isalnum(static_cast<unsigned char>(format[i + 1]))) ++i;
          out += fmt::format("{:016x}", args[next - 1]);
        }
        break;
      default: out += '?'; break;
    }
  }
  while (!out.empty() && out.back() == '\n') out.pop_back();
  return out;
}

bool append_log_record(const Kernel& kernel, PhysicalMemory& memory, const std::string& text, std::uint32_t caller_id,
                       std::string* why) {
  auto no = [&](const std::string& w) {
    if (why) *why = w;
    return false;
  };
  const auto& m = kernel.memory();
  const auto& t = kernel.types();
  auto put = [&](std::uint64_t vaddr, const void* data, std::size_t n) {
    for (std::size_t done = 0; done < n;) {
      std::size_t k = std::min<std::size_t>(n - done, 0x1000 - ((vaddr + done) & 0xfff));
      auto pa = m.to_physical(vaddr + done);
      if (!pa) throw MemoryFault(vaddr + done, k, "not mapped");
      memory.write(*pa, std::as_bytes(std::span(static_cast<const char*>(data) + done, k)));
      done += k;
    }
  };
  try {
    auto ring = read_ring(kernel);
    if (!ring) return no("implausible printk ring sizes");
    const auto& [descs, infos, data, head_id_at, head_id, tail_id, head_lpos_at, head_lpos, tail_lpos, size_bits, count,
                 size] = *ring;
    std::uint64_t id = ring->next_id();
    if (((id - tail_id) & kIdMask) >= count) return no("the printk descriptor ring is full");
    std::uint64_t block = (8 + text.size() + 7) & ~7ull;  // struct prb_data_block: id, then the text
    std::uint64_t begin = head_lpos, next = head_lpos + block;
    if ((begin >> size_bits) != (next >> size_bits)) return no("the record would wrap the printk data ring");
    if (next - tail_lpos > size) return no("the printk data ring is full");
    if (text.size() > 0xffff) return no("text too long");

    std::uint64_t desc_size = t.require_size("prb_desc"), info_size = t.require_size("printk_info");
    std::uint64_t prev_info = ring->slot_of(infos, head_id, info_size);
    std::uint64_t seq = m.read_u64(prev_info + t.offset_of("printk_info", "seq")) + 1;
    std::uint64_t ts = m.read_u64(prev_info + t.offset_of("printk_info", "ts_nsec"));

    // The data block.
    std::vector<char> blk(block, '\0');
    std::memcpy(blk.data(), &id, 8);
    std::memcpy(blk.data() + 8, text.data(), text.size());
    put(ring->data_at(begin), blk.data(), blk.size());
    // The info: zeroed, then seq, time, length, level 0 (emergency) with LOG_NEWLINE, caller.
    std::uint64_t info = ring->slot_of(infos, id, info_size);
    std::vector<char> zero(info_size, '\0');
    put(info, zero.data(), zero.size());
    put(info + t.offset_of("printk_info", "seq"), &seq, 8);
    put(info + t.offset_of("printk_info", "ts_nsec"), &ts, 8);
    auto len = static_cast<std::uint16_t>(text.size());
    put(info + t.offset_of("printk_info", "text_len"), &len, 2);
    FieldInfo flags = t.require_field("printk_info", "flags");
    std::uint8_t flag_byte = static_cast<std::uint8_t>(kLogNewline << (flags.bit_offset % 8));
    put(info + flags.bit_offset / 8, &flag_byte, 1);  // level (0) shares the byte
    put(info + t.offset_of("printk_info", "caller_id"), &caller_id, 4);
    // The descriptor, then the heads: finalized, as after the kernel's own prb_final_commit().
    std::uint64_t desc = ring->slot_of(descs, id, desc_size);
    put(desc + t.offset_of("prb_desc", "text_blk_lpos.begin"), &begin, 8);
    put(desc + t.offset_of("prb_desc", "text_blk_lpos.next"), &next, 8);
    std::uint64_t state = (kFinalized << kStateShift) | id;
    put(desc + t.offset_of("prb_desc", "state_var"), &state, 8);
    put(head_lpos_at, &next, 8);
    put(head_id_at, &id, 8);
  } catch (const MemoryFault& e) {
    return no(std::string("the printk ring is unreadable: ") + e.what());
  } catch (const Error& e) {
    return no(e.what());
  }
  return true;
}

std::vector<std::uint64_t> log_append_pages(const Kernel& kernel, std::size_t max_text) {
  std::vector<std::uint64_t> pages;
  const auto& m = kernel.memory();
  const auto& t = kernel.types();
  auto add = [&](std::uint64_t vaddr, std::uint64_t n) {
    for (std::uint64_t page = vaddr & ~0xfffull; page < vaddr + n; page += 0x1000)
      if (auto pa = m.to_physical(page)) pages.push_back(*pa & ~0xfffull);
  };
  try {
    auto ring = read_ring(kernel);
    if (!ring) return {};
    std::uint64_t id = ring->next_id();
    std::uint64_t desc_size = t.require_size("prb_desc"), info_size = t.require_size("printk_info");
    add(ring->slot_of(ring->descs, id, desc_size), desc_size);
    add(ring->slot_of(ring->infos, id, info_size), info_size);
    std::uint64_t begin = ring->head_lpos & (ring->size - 1);  // a record never wraps (append_log_record)
    add(ring->data_at(ring->head_lpos), std::min<std::uint64_t>(8 + max_text + 8, ring->size - begin));
  } catch (const std::exception&) {
    return {};
  }
  std::sort(pages.begin(), pages.end());
  pages.erase(std::unique(pages.begin(), pages.end()), pages.end());
  return pages;
}

}  // namespace immortal
