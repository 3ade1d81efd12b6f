// The kernel's own unwinder, replayed from outside: ORC tables (arch/x86/kernel/unwind_orc.c,
// Linux 6.1 layout) are read from the guest's memory — the kernel image's __start_orc_unwind*
// and each module's arch.orc_unwind* — and followed from a CPU's registers through call frames,
// exception frames (pt_regs) and stack switches. Frames found this way are reliable; where ORC
// has no answer the unwind stops and says why.
#pragma once

#include "kernel/backtrace.h"
#include "kernel/kernel.h"
#include "x86_64/registers.h"

#include <cstring>
#include <map>
#include <memory>
#include <optional>
#include <span>
#include <utility>
#include <vector>

namespace immortal {

struct OrcEntry {
  std::int16_t sp_offset = 0, bp_offset = 0;
  std::uint8_t sp_reg = 0, bp_reg = 0, type = 0;
  bool end = false;
};

// One ORC table: the kernel image's or a module's, as the kernel has it (its int32 relative ips,
// then its 6-byte entries), read where `bytes` lie: a copy of its own, or for the image's table
// the host's file of it (every guest of the kernel has the same bytes, whatever KASLR's slide:
// the ips are relative to their own address).
struct OrcTable {
  std::uint64_t ip_table = 0;          // address of the int32 relative-ip array at this boot
  std::uint64_t low = 0, high = 0;     // text range it covers
  bool layout_6_4 = false;             // struct orc_entry as 6.4 changed it
  std::span<const std::uint8_t> bytes;  // count * 4 bytes of ips, then count * 6 of entries
  std::shared_ptr<const void> keeper;   // keeps `bytes` (its own vector, or the host's mapping)

  std::size_t size() const { return bytes.size() / 10; }
  std::int32_t ip(std::size_t i) const {
    std::int32_t v;
    std::memcpy(&v, bytes.data() + 4 * i, 4);
    return v;
  }
  // The address the i-th entry starts to cover.
  std::uint64_t address(std::size_t i) const { return ip_table + 4 * i + static_cast<std::int64_t>(ip(i)); }
  OrcEntry entry(std::size_t i) const;
  // The same table read from `shared` (which may be longer) when it starts with these bytes;
  // nullptr when it does not.
  std::shared_ptr<const OrcTable> viewing(std::span<const std::uint8_t> shared, std::shared_ptr<const void> shared_keeper) const;
};

// Where the kernel image's table lies at this boot (its relative-ip array) and how many entries it
// has, from the symbols. Throws Error(ExitCode::bad_input) when they do not say.
std::pair<std::uint64_t, std::uint64_t> image_orc_location(const Kernel& kernel);
// The kernel image's table read from `bytes` (the host's file of it, known to be this kernel's:
// its first count * 10 bytes), without reading the guest's memory; for Kernel::keep_orc_image.
// Throws Error(ExitCode::bad_input) when the bytes are too few for the entries the symbols count.
std::shared_ptr<const OrcTable> image_orc_table(const Kernel& kernel, std::span<const std::uint8_t> bytes,
                                                std::shared_ptr<const void> keeper);

class OrcUnwinder {
 public:
  explicit OrcUnwinder(const Kernel& kernel) : kernel_(kernel) {}
  Backtrace unwind(const X86Registers& registers, std::size_t max_frames = budget::kBacktraceFrames);
  // The ORC entry that covers ip, if any (kernel image or a module).
  std::optional<OrcEntry> find(std::uint64_t ip);

 private:
  using Table = OrcTable;
  const Table* table_for(std::uint64_t ip);
  Table load(std::uint64_t ip_table, std::uint64_t orc_table, std::uint64_t count, std::uint64_t low, std::uint64_t high);

  const Kernel& kernel_;
  struct ModuleSpan {
    std::uint64_t address = 0, base = 0, text_size = 0;  // struct module, its text
    bool tried = false;                                   // its table loaded, or found unusable
  };
  // The image's table is the Kernel's, read once (Kernel::orc_image): it does not change after
  // boot, and copying its megabytes again at every unwind (once per crash, once per hung task)
  // was most of an inline analysis's time.
  std::shared_ptr<const Table> image_;
  std::map<std::uint64_t, ModuleSpan> spans_;  // by module text base: listed once, tables loaded when needed
  std::map<std::uint64_t, Table> modules_;     // by module text base
  bool modules_listed_ = false;
  std::uint64_t entries_ = 0;                  // in every table loaded: within budget::kOrcTotalEntries
};

// A CPU's backtrace the way reports show it: ORC first; where it gives no more than the frame at
// rip, a stack scan (unverified frames). method says which, and why the scan was needed.
Backtrace unwind_or_scan(const Kernel& kernel, const X86Registers& registers, std::string* method);

}  // namespace immortal
