#include "kernel/backtrace.h"

#include <fmt/format.h>

namespace immortal {

namespace {
constexpr std::uint64_t kThreadSize = 16384;  // arch/x86/include/asm/page_64_types.h (KASAN off)
}

Backtrace scan_stack(const Kernel& kernel, std::uint64_t rip, std::uint64_t rsp, std::size_t max_frames) {
  Backtrace bt;
  bt.frames.push_back({rip, kernel.symbols().describe(rip), true});
  std::uint64_t end = (rsp | (kThreadSize - 1)) + 1;
  for (std::uint64_t at = rsp & ~7ull; at < end && bt.frames.size() < max_frames; at += 8) {
    std::uint64_t word;
    try {
      word = kernel.memory().read_u64(at);
    } catch (const MemoryFault& e) {
      bt.problem = fmt::format("stack unreadable at {:#x}", at);
      break;
    }
    if (word >= 0xffff800000000000ull && kernel.symbols().is_text(word))
      bt.frames.push_back({word, kernel.symbols().describe(word), false});
  }
  return bt;
}

std::string format_backtrace(const Backtrace& bt) {
  std::string out;
  for (const auto& f : bt.frames) out += fmt::format("  {}{}\n", f.reliable ? "" : "? ", f.symbol);
  if (!bt.problem.empty()) out += "  (" + bt.problem + ")\n";
  return out;
}

std::string taint_string(std::uint64_t mask) {
  // kernel/panic.c taint_flags[], in bit order.
  static const char kLetters[] = "PFSRMBUDAWCIOELKXTN";
  if (mask == 0) return "G";
  std::string out;
  for (int bit = 0; bit < static_cast<int>(sizeof kLetters) - 1; ++bit)
    if (mask & (1ull << bit)) out.push_back(kLetters[bit]);
  return out;
}

std::uint64_t read_taint_mask(const Kernel& kernel) { return kernel.memory().read_u64(kernel.symbol("tainted_mask")); }

}  // namespace immortal
