#include "kernel/orc_unwind.h"

#include "base/budgets.h"
#include "base/error.h"
#include "kernel/modules.h"

#include <fmt/format.h>

#include <algorithm>
#include <cstring>
#include <set>
#include <utility>

namespace immortal {

namespace {

// arch/x86/include/asm/orc_types.h (6.1)
constexpr std::uint8_t kRegUndefined = 0, kRegPrevSp = 1, kRegBp = 4, kRegSp = 5, kRegBpIndirect = 8, kRegSpIndirect = 9;
constexpr std::uint8_t kTypeCall = 0, kTypeRegs = 1, kTypeRegsPartial = 2;
// struct pt_regs (x86-64): offsets of bp, ip and sp; the IRET frame starts at ip.
constexpr std::uint64_t kRegsBp = 4 * 8, kRegsIp = 16 * 8, kRegsSp = 19 * 8;
constexpr std::uint64_t kUserSpaceEnd = 0x0000800000000000ull;

// Linux 6.4 widened the type to 3 bits (type:3, signal:1 instead of type:2, end:1) and made
// "undefined" and "end of stack" types of their own, numbering the others after them.
constexpr std::uint8_t kType64Undefined = 0, kType64EndOfStack = 1, kType64Call = 2, kType64Regs = 3,
                       kType64RegsPartial = 4;

// One packed struct orc_entry, in the unwinder's 6.1 terms whatever the layout.
OrcEntry decode(const std::uint8_t* p, bool layout_6_4) {
  OrcEntry e;
  std::memcpy(&e.sp_offset, p, 2);
  std::memcpy(&e.bp_offset, p + 2, 2);
  std::uint16_t bits;
  std::memcpy(&bits, p + 4, 2);
  e.sp_reg = bits & 0xf;
  e.bp_reg = (bits >> 4) & 0xf;
  if (!layout_6_4) {
    e.type = (bits >> 8) & 0x3;
    e.end = (bits >> 10) & 0x1;
    return e;
  }
  switch ((bits >> 8) & 0x7) {
    case kType64Undefined: e.sp_reg = kRegUndefined; e.end = false; break;
    case kType64EndOfStack: e.sp_reg = kRegUndefined; e.end = true; break;
    case kType64Call: e.type = kTypeCall; break;
    case kType64Regs: e.type = kTypeRegs; break;
    case kType64RegsPartial: e.type = kTypeRegsPartial; break;
    default: e.type = 0xff; break;  // reported as an unknown frame type
  }
  return e;
}

}  // namespace

OrcEntry OrcTable::entry(std::size_t i) const { return decode(bytes.data() + 4 * size() + 6 * i, layout_6_4); }

std::shared_ptr<const OrcTable> OrcTable::viewing(std::span<const std::uint8_t> shared,
                                                  std::shared_ptr<const void> shared_keeper) const {
  if (!shared_keeper || shared.size() < bytes.size() || std::memcmp(shared.data(), bytes.data(), bytes.size()) != 0)
    return nullptr;
  auto t = std::make_shared<OrcTable>(*this);
  t->bytes = shared.first(bytes.size());
  t->keeper = std::move(shared_keeper);
  return t;
}

std::pair<std::uint64_t, std::uint64_t> image_orc_location(const Kernel& kernel) {
  const auto& s = kernel.symbols();
  auto ips = s.address_of("__start_orc_unwind_ip"), ips_end = s.address_of("__stop_orc_unwind_ip");
  if (!ips || !ips_end || *ips_end <= *ips) fail(ExitCode::bad_input, "the profile's symbols do not locate the kernel's ORC tables");
  return {*ips, (*ips_end - *ips) / 4};
}

std::shared_ptr<const OrcTable> image_orc_table(const Kernel& kernel, std::span<const std::uint8_t> bytes,
                                                std::shared_ptr<const void> keeper) {
  auto [ips, count] = image_orc_location(kernel);
  if (count == 0 || count > budget::kOrcTableEntries) fail(ExitCode::bad_input, "implausible ORC table size {}", count);
  if (bytes.size() < count * 10)
    fail(ExitCode::bad_input, "the kernel's {} ORC entries take {} bytes; the table given has {}", count, count * 10, bytes.size());
  auto t = std::make_shared<OrcTable>();
  t->ip_table = ips;
  t->bytes = bytes.first(count * 10);
  t->keeper = std::move(keeper);
  t->layout_6_4 = kernel.types().field("orc_entry", "signal").has_value();
  // The image's table covers its text and init text: from its first to its last address.
  t->low = t->address(0);
  t->high = t->address(t->size() - 1) + 1;
  return t;
}

OrcUnwinder::Table OrcUnwinder::load(std::uint64_t ip_table, std::uint64_t orc_table, std::uint64_t count,
                                     std::uint64_t low, std::uint64_t high) {
  if (count == 0 || count > budget::kOrcTableEntries) fail(ExitCode::bad_input, "implausible ORC table size {}", count);
  if (entries_ + count > budget::kOrcTotalEntries)
    fail(ExitCode::bad_input, "the ORC tables claim more than {} entries in all", budget::kOrcTotalEntries);
  entries_ += count;
  Table t;
  t.ip_table = ip_table;
  t.low = low;
  t.high = high;
  auto raw = std::make_shared<std::vector<std::uint8_t>>(count * 10);
  kernel_.memory().read(ip_table, std::as_writable_bytes(std::span(*raw).first(count * 4)));
  kernel_.memory().read(orc_table, std::as_writable_bytes(std::span(*raw).subspan(count * 4)));
  t.bytes = *raw;
  t.keeper = std::move(raw);
  // Which struct orc_entry this kernel has, from its BTF: "signal" came with 6.4's layout.
  t.layout_6_4 = kernel_.types().field("orc_entry", "signal").has_value();
  return t;
}

const OrcUnwinder::Table* OrcUnwinder::table_for(std::uint64_t ip) {
  const auto& s = kernel_.symbols();
  if (!image_ && (image_ = kernel_.orc_image())) entries_ += image_->size();  // counted as if loaded
  if (!image_) {
    auto [ips, count] = image_orc_location(kernel_);
    auto orcs = s.address_of("__start_orc_unwind");
    if (!orcs) fail(ExitCode::bad_input, "the profile's symbols do not locate the kernel's ORC tables");
    Table read = load(ips, *orcs, count, 0, 0);
    image_ = image_orc_table(kernel_, read.bytes, std::move(read.keeper));
    kernel_.keep_orc_image(image_);
  }
  if (ip >= image_->low && ip < image_->high) return &*image_;
  if (!modules_listed_) {
    modules_listed_ = true;
    for (const auto& m : read_modules(kernel_).modules)
      if (m.text_size > 0) spans_[m.base] = ModuleSpan{m.address, m.base, m.text_size};
  }
  // Only the table of the module the address is in: a guest that claims many modules with huge
  // tables costs us one of them per frame at most, within the budgets.
  auto span = spans_.upper_bound(ip);
  if (span == spans_.begin()) return nullptr;
  --span;
  ModuleSpan& m = span->second;
  if (ip - m.base >= m.text_size) return nullptr;
  if (!std::exchange(m.tried, true)) {
    const auto& t = kernel_.types();
    auto num = t.field("module", "arch.num_orcs"), ip_field = t.field("module", "arch.orc_unwind_ip"),
         orc_field = t.field("module", "arch.orc_unwind");
    if (num && ip_field && orc_field) {
      try {
        auto n = kernel_.memory().read_value<std::uint32_t>(m.address + num->byte_offset());
        if (n != 0)
          modules_[m.base] = load(kernel_.memory().read_u64(m.address + ip_field->byte_offset()),
                                  kernel_.memory().read_u64(m.address + orc_field->byte_offset()), n, m.base,
                                  m.base + m.text_size);
      } catch (const MemoryFault&) {
      } catch (const Error&) {
      }
    }
  }
  auto it = modules_.find(m.base);
  return it == modules_.end() ? nullptr : &it->second;
}

std::optional<OrcEntry> OrcUnwinder::find(std::uint64_t ip) {
  const Table* t = table_for(ip);
  if (!t) return std::nullopt;
  // ip_table[i] holds the address of its code relative to its own address; sorted by address.
  std::size_t lo = 0, hi = t->size();
  while (lo < hi) {
    std::size_t mid = lo + (hi - lo) / 2;
    if (t->address(mid) <= ip) lo = mid + 1;
    else hi = mid;
  }
  if (lo == 0) return std::nullopt;
  return t->entry(lo - 1);
}

Backtrace OrcUnwinder::unwind(const X86Registers& r, std::size_t max_frames) {
  Backtrace bt;
  const auto& mem = kernel_.memory();
  std::uint64_t ip = r.rip, sp = r.rsp, bp = r.rbp;
  std::uint64_t regs = 0;  // address of the last full pt_regs frame, 0 when there is none
  bool signal = true;                 // ip is exact (not a return address) at the start and after exceptions
  std::set<std::pair<std::uint64_t, std::uint64_t>> seen;
  bt.frames.push_back({ip, kernel_.symbols().describe(ip), true, sp, 0});
  try {
    for (;;) {
      if (bt.frames.size() >= max_frames) {
        bt.problem = fmt::format("more than {} frames; the rest is not shown", max_frames);
        bt.truncated = true;
        break;
      }
      if (!seen.insert({ip, sp}).second) {
        bt.problem = "the unwind loops";
        break;
      }
      std::optional<OrcEntry> orc = find(signal ? ip : ip - 1);
      if (!orc) {
        bt.problem = fmt::format("no ORC data for {}", kernel_.symbols().describe(ip));
        break;
      }
      if (orc->sp_reg == kRegUndefined) {
        if (!orc->end) bt.problem = "ORC marks an undefined stack here";
        break;  // the end of a kernel thread's stack
      }
      std::uint64_t prev_sp;
      switch (orc->sp_reg) {
        case kRegSp: prev_sp = sp + orc->sp_offset; break;
        case kRegBp: prev_sp = bp + orc->sp_offset; break;
        case kRegSpIndirect: prev_sp = mem.read_u64(sp) + orc->sp_offset; break;
        case kRegBpIndirect: prev_sp = mem.read_u64(bp + orc->sp_offset); break;
        default: {
          // DX, DI, R10, R13: only known from a full pt_regs frame.
          static const std::map<std::uint8_t, std::uint64_t> kRegOffsets = {{2, 12 * 8}, {3, 14 * 8}, {6, 7 * 8}, {7, 2 * 8}};
          auto o = kRegOffsets.find(orc->sp_reg);
          if (regs == 0 || o == kRegOffsets.end()) {
            bt.problem = fmt::format("ORC needs register {} here, which is not known", orc->sp_reg);
            return bt;
          }
          prev_sp = mem.read_u64(regs + o->second) + orc->sp_offset;
        }
      }
      switch (orc->type) {
        case kTypeCall:
          ip = mem.read_u64(prev_sp - 8);
          sp = prev_sp;
          regs = 0;
          signal = false;
          break;
        case kTypeRegs:
          regs = prev_sp;
          ip = mem.read_u64(prev_sp + kRegsIp);
          sp = mem.read_u64(prev_sp + kRegsSp);
          signal = true;
          break;
        case kTypeRegsPartial:
          regs = 0;  // only the IRET frame: ip, cs, flags, sp, ss
          ip = mem.read_u64(prev_sp);
          sp = mem.read_u64(prev_sp + 24);
          signal = true;
          break;
        default:
          bt.problem = fmt::format("unknown ORC frame type {}", orc->type);
          return bt;
      }
      switch (orc->bp_reg) {
        case kRegUndefined:
          if (regs) bp = mem.read_u64(regs + kRegsBp);
          break;
        case kRegPrevSp: bp = mem.read_u64(prev_sp + orc->bp_offset); break;
        case kRegBp: bp = mem.read_u64(bp + orc->bp_offset); break;
        default:
          bt.problem = fmt::format("unknown ORC bp register {}", orc->bp_reg);
          return bt;
      }
      if (ip < kUserSpaceEnd) {
        bt.frames.push_back({ip, fmt::format("{:#x} (user space)", ip), true, sp, orc->type == kTypeRegs ? regs : 0});
        break;  // entered from user mode: the kernel stack ends here
      }
      bt.frames.push_back({ip, signal ? kernel_.symbols().describe(ip) : kernel_.symbols().describe_return(ip), true,
                           sp, orc->type == kTypeRegs ? regs : 0});
    }
  } catch (const MemoryFault& e) {
    bt.problem = fmt::format("stack unreadable: {}", e.what());
  }
  return bt;
}

Backtrace unwind_or_scan(const Kernel& kernel, const X86Registers& registers, std::string* method) {
  Backtrace bt;
  *method = "orc";
  try {
    bt = OrcUnwinder(kernel).unwind(registers);
  } catch (const Error& e) {
    bt.problem = e.what();
  }
  if (bt.frames.size() <= 1) {
    std::string why = bt.problem;
    bt = scan_stack(kernel, registers.rip, registers.rsp);
    *method = "stack scan (" + why + ")";
  }
  return bt;
}

}  // namespace immortal
