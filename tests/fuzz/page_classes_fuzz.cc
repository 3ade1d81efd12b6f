// Fuzz target: sorting a guest's pages for a filtered bundle (diag/dump/page_classes). The
// struct page array and the VMCOREINFO that says where its fields are both come from guest
// memory. Input: the VMCOREINFO text, a NUL, then 64 KiB of struct pages. from_kernel() must
// refuse what it cannot use, and classify() read only inside struct page and end.
#include "base/error.h"
#include "dump/page_classes.h"
#include "support/fake_kernel.h"

#include <algorithm>
#include <cstdint>

using namespace immortal;

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  static test::VectorMemory ram(1 << 21);
  static bool mapped = [] {
    test::map_kernel_image(ram);
    ram.put<std::uint64_t>(0x3000, test::kva(0x100000));  // vmemmap_base: struct pages at 0x100000
    return true;
  }();
  (void)mapped;
  const std::uint8_t* end = data + size;
  const std::uint8_t* nul = std::find(data, end, std::uint8_t{0});
  std::string info(reinterpret_cast<const char*>(data), static_cast<std::size_t>(nul - data));
  std::vector<std::byte> pages(0x10000);
  if (nul != end)
    std::copy_n(reinterpret_cast<const std::byte*>(nul + 1), std::min<std::size_t>(static_cast<std::size_t>(end - nul - 1), pages.size()),
                pages.begin());
  ram.write(0x100000, pages);
  try {
    auto kernel = Kernel::assemble(ram, KernelLayout{0x1000}, SymbolTable::from_kallsyms("ffffffff80003000 D vmemmap_base\n"),
                                   test::linux_like_types(), "fuzz", "", info);
    std::string why;
    if (auto classifier = PageClassifier::from_kernel(*kernel, &why)) {
      std::vector<PageClass> out(1024 + 37);
      classifier->classify(0, out);
      classifier->classify(1000, out);
      classifier->classify(~0ull >> 12, out);
    }
  } catch (const Error&) {
  }
  return 0;
}
