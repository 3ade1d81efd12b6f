// Fuzz target: the printk ring of a crashed (or hostile) kernel. The input is the memory of the
// ring structures (descriptor ring, infos, data) of a synthetic kernel with Linux 6.1's layout;
// reading the log must end, bounded, with records or errors, never a crash.
#include "base/error.h"
#include "kernel/printk.h"
#include "support/fake_kernel.h"

#include <cstdint>
#include <cstring>

using namespace immortal;
using namespace immortal::test;

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  static VectorMemory ram(1 << 24);
  static std::unique_ptr<Kernel> kernel = [] {
    map_kernel_image(ram);
    KernelLayout layout;
    layout.page_table = 0x1000;
    return Kernel::assemble(ram, layout, SymbolTable::from_kallsyms("ffffffff80a00000 D prb\n"), linux_like_types(),
                            "fuzz");
  }();
  // prb → ring at 0x200000; the input overwrites the ring header and what follows (bounded).
  ram.put<std::uint64_t>(0xa00000, kva(0x200000));
  std::size_t n = std::min<std::size_t>(size, 0x10000);
  std::vector<std::byte> zero(0x10000);
  ram.write(0x200000, zero);
  ram.write(0x200000, std::as_bytes(std::span(data, n)));
  try {
    KernelLog log = read_kernel_log(*kernel);
    (void)panic_message(log);
  } catch (const Error&) {
  } catch (const MemoryFault&) {
  }
  return 0;
}
