// A synthetic kernel that describes itself the way Linux 6.1 does for profile_from_memory: the
// compressed kallsyms tables (kernel/kallsyms.c, as scripts/kallsyms.c writes them), BTF between
// __start_BTF and __stop_BTF, linux_banner, and the VMCOREINFO that points at the tables. Used by
// the profile_from_memory unit test and the kernel-from-memory fuzz target.
#pragma once

#include "support/fake_kernel.h"

#include <cstdint>
#include <string>
#include <vector>

namespace immortal::test {

// A minimal valid BTF blob: header, one "int" type, its string.
std::string tiny_btf();

// Physical layout of the synthetic kernel (the image maps kKernelBase + x to x).
namespace kallsyms_layout {
inline constexpr std::uint64_t kOffsets = 0x10000, kRelativeBase = 0x11000, kNumSyms = 0x11008, kNames = 0x12000,
                               kTokenTable = 0x30000, kTokenIndex = 0x31000, kBtf = 0x40000, kBanner = 0x50000,
                               kPageOffsetBase = 0x50100, kText = 0x100000;
}

struct FakeSymbol {
  char type;
  std::string name;
  std::uint64_t address;
};

struct FakeKallsyms {
  std::vector<FakeSymbol> symbols;
  std::vector<std::string> tokens = std::vector<std::string>(256);
  std::string vmcoreinfo;

  // Tokens: every printable character stands for itself, and a few codes for longer pieces, as
  // scripts/kallsyms.c's compression leaves them (first character of a symbol is its type).
  // Symbols: two absolute per-CPU ones, text, a "big" one (2-byte length), data, BTF bounds.
  FakeKallsyms();

  // Greedy compression with the token table above.
  std::string compress(const std::string& text) const;
  // Maps the kernel image and writes the tables, BTF, banner and page_offset_base.
  void write(VectorMemory& ram) const;
  // What /proc/kallsyms would show for the symbols.
  std::string expected_kallsyms() const;
};

}  // namespace immortal::test
