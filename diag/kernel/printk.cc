#include "kernel/printk.h"

#include "base/budgets.h"
#include "base/error.h"

#include <fmt/format.h>

#include <deque>
#include <iterator>

namespace immortal {

namespace {
// kernel/printk/printk_ringbuffer.h: the top two bits of state_var are the state.
constexpr int kStateShift = 62;
constexpr std::uint64_t kIdMask = ~(3ull << kStateShift);
constexpr std::uint64_t kCommitted = 1, kFinalized = 2;
constexpr unsigned kMaxCountBits = 24, kMaxSizeBits = 30;
}  // namespace

KernelLog read_kernel_log(const Kernel& kernel, std::size_t newest) {
  const auto& m = kernel.memory();
  const auto& t = kernel.types();
  KernelLog log;
  std::uint64_t rb = m.read_u64(kernel.symbol("prb"));  // struct printk_ringbuffer *prb
  std::uint64_t desc_ring = rb + t.offset_of("printk_ringbuffer", "desc_ring");
  std::uint64_t data_ring = rb + t.offset_of("printk_ringbuffer", "text_data_ring");
  auto count_bits = m.read_value<std::uint32_t>(desc_ring + t.offset_of("prb_desc_ring", "count_bits"));
  auto size_bits = m.read_value<std::uint32_t>(data_ring + t.offset_of("prb_data_ring", "size_bits"));
  if (count_bits > kMaxCountBits || size_bits > kMaxSizeBits || size_bits < 4)
    fail(ExitCode::bad_input, "implausible printk ring sizes ({} descriptor bits, {} data bits)", count_bits, size_bits);
  std::uint64_t descs = m.read_u64(desc_ring + t.offset_of("prb_desc_ring", "descs"));
  std::uint64_t infos = m.read_u64(desc_ring + t.offset_of("prb_desc_ring", "infos"));
  std::uint64_t head_id = m.read_u64(desc_ring + t.offset_of("prb_desc_ring", "head_id"));
  std::uint64_t tail_id = m.read_u64(desc_ring + t.offset_of("prb_desc_ring", "tail_id"));
  std::uint64_t data = m.read_u64(data_ring + t.offset_of("prb_data_ring", "data"));
  std::uint64_t desc_mask = (1ull << count_bits) - 1;
  std::uint64_t data_size = 1ull << size_bits, data_mask = data_size - 1;

  std::uint64_t desc_size = t.require_size("prb_desc");
  std::uint64_t info_size = t.require_size("printk_info");
  std::uint64_t state_off = t.offset_of("prb_desc", "state_var");
  std::uint64_t begin_off = t.offset_of("prb_desc", "text_blk_lpos.begin");
  std::uint64_t next_off = t.offset_of("prb_desc", "text_blk_lpos.next");
  std::uint64_t seq_off = t.offset_of("printk_info", "seq");
  std::uint64_t ts_off = t.offset_of("printk_info", "ts_nsec");
  std::uint64_t len_off = t.offset_of("printk_info", "text_len");
  FieldInfo level = t.require_field("printk_info", "level");

  // Within the budgets the newest records are kept (a crash's are last): the walk starts no
  // more than budget::kLogRecords before the head, and the oldest text goes first when the
  // records together hold more than budget::kLogTextBytes.
  std::uint64_t limit = std::min<std::uint64_t>(newest, budget::kLogRecords);
  std::uint64_t id = tail_id & kIdMask;
  if (limit == 0) return log;
  if (((head_id - tail_id) & kIdMask) >= limit) {
    id = (head_id - limit + 1) & kIdMask;
    log.truncated = true;
  }
  std::deque<LogRecord> kept;
  std::uint64_t text_bytes = 0;
  // A page of descriptors that could not be read: the others in it are skipped without trying
  // (a forged ring of millions of descriptors outside its array costs a fault a page, not one
  // each).
  std::uint64_t unreadable_page = ~0ull;
  for (std::uint64_t n = 0; n <= desc_mask && n < limit; ++n, id = (id + 1) & kIdMask) {
    std::uint64_t index = id & desc_mask;
    std::uint64_t desc = descs + index * desc_size;
    bool reading_descriptor = true;
    if ((desc + state_off) >> 12 == unreadable_page) {
      ++log.skipped;
      if (id == (head_id & kIdMask)) break;
      continue;
    }
    try {
      std::uint64_t state_var = m.read_u64(desc + state_off);
      reading_descriptor = false;
      std::uint64_t state = state_var >> kStateShift;
      if ((state_var & kIdMask) != id || (state != kCommitted && state != kFinalized)) {
        ++log.skipped;
      } else {
        std::uint64_t info = infos + index * info_size;
        LogRecord r;
        r.seq = m.read_u64(info + seq_off);
        r.ts_nsec = m.read_u64(info + ts_off);
        auto text_len = m.read_value<std::uint16_t>(info + len_off);
        auto level_byte = m.read_value<std::uint8_t>(info + level.bit_offset / 8);
        r.level = (level_byte >> (level.bit_offset % 8)) & ((1u << level.bit_size) - 1);
        std::uint64_t begin = m.read_u64(desc + begin_off), next = m.read_u64(desc + next_off);
        if (!(begin & 1)) {  // odd lpos values mark records without data (FAILED_LPOS, NO_LPOS)
          // As get_data() in printk_ringbuffer.c: a regular block lies within one wrap; a
          // wrapping block keeps its data at the start of the ring.
          auto wraps = [&](std::uint64_t lpos) { return lpos >> size_bits; };
          std::uint64_t at = 0, block = 0;
          bool valid = true;
          if (wraps(begin) == wraps(next) && begin < next) {
            at = begin & data_mask;
            block = next - begin;
          } else if (wraps(begin + data_size) == wraps(next)) {
            at = 0;
            block = next & data_mask;
          } else {
            valid = false;
          }
          if (valid && block >= 8 && block <= data_size) {
            std::uint64_t len = std::min<std::uint64_t>(text_len, block - 8);  // the block starts with its id
            r.text.resize(len);
            m.read(data + at + 8, std::as_writable_bytes(std::span(r.text.data(), r.text.size())));
          }
        }
        text_bytes += r.text.size();
        kept.push_back(std::move(r));
        while (text_bytes > budget::kLogTextBytes && !kept.empty()) {
          text_bytes -= kept.front().text.size();
          kept.pop_front();
          log.truncated = true;
        }
      }
    } catch (const MemoryFault&) {
      ++log.skipped;
      if (reading_descriptor) unreadable_page = (desc + state_off) >> 12;
    }
    if (id == (head_id & kIdMask)) break;
  }
  log.records.assign(std::make_move_iterator(kept.begin()), std::make_move_iterator(kept.end()));
  return log;
}

std::string panic_message(const KernelLog& log) {
  static const std::string prefix = "Kernel panic - not syncing: ";
  for (auto it = log.records.rbegin(); it != log.records.rend(); ++it)
    if (it->text.rfind(prefix, 0) == 0) return it->text.substr(prefix.size());
  return {};
}

}  // namespace immortal
