// Memory snapshots, the kdump-layout vmcore writer (read back by our own ELF reader), bundles
// (atomic directories, manifests, retention) and the bundle reader's refusals.
#include "dump/memory_snapshot.h"
#include "dump/vmcore_writer.h"
#include "memory/elf_core.h"
#include "support/fake_kernel.h"

#include <catch2/catch.hpp>

#include <fcntl.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>

using namespace immortal;
using immortal::test::VectorMemory;

namespace {

std::string temp_path(const char* stem) {
  char path[64];
  std::snprintf(path, sizeof path, "/tmp/immortal-unit-%s-XXXXXX", stem);
  int fd = ::mkstemp(path);
  REQUIRE(fd >= 0);
  ::close(fd);
  return path;
}

}  // namespace

TEST_CASE("a snapshot copies non-zero pages; the vmcore holds them and reads zero pages as zeros", "[bundle]") {
  constexpr std::uint64_t kPages = 64;
  VectorMemory ram(kPages * 4096);
  // Pages 1, 2, 40 and 63 carry data; the rest stay zero.
  for (std::uint64_t p : {1, 2, 40, 63}) ram.put_bytes(p * 4096 + 100, "page " + std::to_string(p));
  auto snap = MemorySnapshot::take(ram, nullptr, true);
  CHECK(snap->census().total_pages == kPages);
  CHECK(snap->census().pages[static_cast<int>(PageClass::zero)] == kPages - 4);
  CHECK(snap->census().copied_bytes == 4 * 4096);
  CHECK(snap->page_class(40 * 4096) == PageClass::kernel);
  CHECK(snap->page_class(41 * 4096) == PageClass::zero);

  // Later writes to the guest do not reach the snapshot.
  ram.put_bytes(40 * 4096 + 100, "changed");
  char buf[8] = {};
  snap->read(40 * 4096 + 100, std::as_writable_bytes(std::span(buf, 7)));
  CHECK(std::string(buf, 7) == "page 40");

  std::string path = temp_path("vmcore");
  int fd = ::open(path.c_str(), O_WRONLY | O_TRUNC);
  REQUIRE(fd >= 0);
  X86Registers regs;
  regs.rip = 0xffffffff81000123ull;
  regs.rsp = 0xffffc90000013f00ull;
  VmcoreLayout layout{0xffff888000000000ull, 0xffffffff81000000ull, 4096, 2 * 4096};
  std::uint64_t last_progress = 0;
  auto stats = write_vmcore(fd, *snap, {{42, regs}, {0, X86Registers{}}}, "OSRELEASE=6.1.0-test\nPAGESIZE=4096\n", layout,
                            [&](std::uint64_t done, std::uint64_t) { last_progress = done; });
  ::close(fd);
  CHECK(stats.file_bytes == last_progress);
  CHECK(stats.data_pages == 4);
  // Zero pages are not in the file: it is far smaller than the RAM it describes.
  CHECK(stats.file_bytes < 12 * 4096);

  auto core = ElfCoreMemory::open(path);
  REQUIRE(core->cpus().size() == 2);
  CHECK(core->cpus()[0].pid == 42);
  CHECK(core->cpus()[0].registers.rip == regs.rip);
  CHECK(core->cpus()[0].registers.rsp == regs.rsp);
  CHECK(core->vmcoreinfo()->find("OSRELEASE=6.1.0-test") == 0);
  REQUIRE(core->ranges().size() == 1);
  CHECK(core->ranges()[0].size == kPages * 4096);
  CHECK(core->missing().empty());
  for (std::uint64_t p = 0; p < kPages; ++p) {
    std::vector<std::byte> got(4096), want(4096);
    core->read(p * 4096, got);
    snap->read(p * 4096, want);
    INFO("page " << p);
    CHECK(got == want);
  }
  std::remove(path.c_str());
}

