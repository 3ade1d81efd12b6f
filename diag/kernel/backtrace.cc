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
    if (word >= kKernelSpaceStart && kernel.symbols().is_text(word))
      bt.frames.push_back({word, kernel.symbols().describe(word), false});
  }
  return bt;
}

}  // namespace immortal
