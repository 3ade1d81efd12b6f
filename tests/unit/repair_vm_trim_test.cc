// Giving back the repair VM's free pages (vmm/repair/repair_vm_trim.h): which bytes of its RAM
// file are punched for given page classes. (Reading the classes from a real repair VM's kernel
// is the integration test's: tests/integration/repair_test.cc, "module change".)
#include "base/sealed_memfd.h"
#include "repair/repair_vm_trim.h"

#include <catch2/catch.hpp>

#include <sys/stat.h>
#include <unistd.h>

#include <vector>

using namespace immortal;
using namespace immortal::vmm;

namespace {

constexpr std::uint64_t kPage = MemorySnapshot::kPageSize;

std::uint64_t allocated(int fd) {
  struct stat st {};
  REQUIRE(::fstat(fd, &st) == 0);
  return static_cast<std::uint64_t>(st.st_blocks) * 512;
}

}  // namespace

TEST_CASE("repair VM trim: free pages are punched out of the RAM file where their segment puts them, nothing else",
          "[repair-trim]") {
  // Two RAM segments, as QEMU lays out guest RAM below and above a hole: guest-physical
  // [0, 8 pages) at file offset 0 and [16 pages, 24 pages) at file offset 8 pages.
  UniqueFd fd = sealed_memfd("trim-test", 16 * kPage);
  std::vector<char> page(kPage, 'x');
  for (std::uint64_t i = 0; i < 16; ++i) REQUIRE(::pwrite(fd.get(), page.data(), kPage, static_cast<off_t>(i * kPage)) == static_cast<ssize_t>(kPage));
  Machine::RamFile ram{fd.get(), 16 * kPage, {{0, 0, 8 * kPage}, {16 * kPage, 8 * kPage, 8 * kPage}}};
  REQUIRE(allocated(fd.get()) == 16 * kPage);

  std::vector<PageClass> low(8, PageClass::kernel), high(8, PageClass::kernel);
  low[2] = low[3] = low[4] = PageClass::free;  // one run
  low[7] = PageClass::free;                      // at a segment's end
  high[0] = PageClass::free;                     // at the second segment's start
  high[5] = PageClass::user;                     // not free: kept
  RamClasses classes{{{0, 8 * kPage}, low}, {{16 * kPage, 8 * kPage}, high},
                     {{64 * kPage, 2 * kPage}, {PageClass::free, PageClass::free}}};  // in no segment: ignored
  CHECK(punch_free_pages(ram, classes) == 5 * kPage);
  CHECK(allocated(fd.get()) == 11 * kPage);
  auto byte_at = [&](std::uint64_t file_page) {
    char c = 0;
    REQUIRE(::pread(fd.get(), &c, 1, static_cast<off_t>(file_page * kPage + 100)) == 1);
    return c;
  };
  for (std::uint64_t p : {2, 3, 4, 7, 8}) CHECK(byte_at(p) == 0);
  for (std::uint64_t p : {0, 1, 5, 6, 9, 13, 15}) CHECK(byte_at(p) == 'x');
  CHECK(punch_free_pages(ram, classes) == 0);  // punched already: nothing more to give back
}

TEST_CASE("repair VM trim: all-zero pages are found without filling holes, and given back", "[repair-trim]") {
  UniqueFd fd = sealed_memfd("trim-zero-test", 200 * kPage);  // a hole: nothing allocated yet
  std::vector<char> page(kPage, 'x'), zero(kPage, 0);
  // Pages 0-99 written (5-7 and 60 with zeros), 100-199 never touched (a hole).
  for (std::uint64_t i = 0; i < 100; ++i) {
    bool z = (i >= 5 && i <= 7) || i == 60;
    REQUIRE(::pwrite(fd.get(), (z ? zero : page).data(), kPage, static_cast<off_t>(i * kPage)) == static_cast<ssize_t>(kPage));
  }
  Machine::RamFile ram{fd.get(), 200 * kPage, {{0, 0, 200 * kPage}}};
  REQUIRE(allocated(fd.get()) == 100 * kPage);
  auto runs = zero_page_runs(ram);
  CHECK(allocated(fd.get()) == 100 * kPage);  // reading the hole did not fill it
  using Runs = std::vector<std::pair<std::uint64_t, std::uint64_t>>;
  CHECK(runs == Runs{{5 * kPage, 3 * kPage}, {60 * kPage, kPage}});  // not the hole: it is given back already
  CHECK(punch_free_pages(ram, {}, runs) == 4 * kPage);
  CHECK(allocated(fd.get()) == 96 * kPage);
  char c = 0;
  REQUIRE(::pread(fd.get(), &c, 1, static_cast<off_t>(6 * kPage)) == 1);
  CHECK(c == 0);
  REQUIRE(::pread(fd.get(), &c, 1, static_cast<off_t>(8 * kPage)) == 1);
  CHECK(c == 'x');
}
