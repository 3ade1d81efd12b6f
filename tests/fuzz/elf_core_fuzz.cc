// Fuzz target: a vmcore file is untrusted input. Opens arbitrary bytes as an ELF core and reads
// every range it claims; only Error and MemoryFault may come out.
#include "base/error.h"
#include "memory/elf_core.h"

#include <sys/mman.h>
#include <unistd.h>

#include <cstdint>
#include <string>

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  static int fd = ::memfd_create("elf-core-fuzz", 0);
  if (::ftruncate(fd, 0) != 0 || ::pwrite(fd, data, size, 0) != static_cast<ssize_t>(size)) return 0;
  try {
    auto core = immortal::ElfCoreMemory::open("/proc/self/fd/" + std::to_string(fd));
    std::byte buf[64];
    for (const auto& r : core->ranges()) {
      core->read(r.start, std::span(buf, std::min<std::uint64_t>(sizeof buf, r.size)));
      core->read(r.end() - std::min<std::uint64_t>(sizeof buf, r.size), std::span(buf, std::min<std::uint64_t>(sizeof buf, r.size)));
    }
    (void)core->vmcoreinfo();
  } catch (const immortal::Error&) {
  } catch (const immortal::MemoryFault&) {
  }
  return 0;
}
