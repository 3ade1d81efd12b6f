#include "kernel/taint.h"

namespace immortal {

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
