// Which pages a filtered bundle keeps: the kernel's own struct page array, read through the
// offsets VMCOREINFO exports, sorted into free, user, page-cache and kernel pages — and a
// VMCOREINFO a guest forged (offsets outside struct page, absurd sizes and orders) refused or
// bounded, never read out of bounds.
#include "dump/page_classes.h"
#include "memory/shared_ram.h"
#include "recovery/page_class_agent.h"

#include "support/fake_agent.h"
#include "support/fake_kernel.h"

#include <catch2/catch.hpp>

#include <sys/mman.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>

using namespace immortal;
using namespace immortal::test;

namespace {

constexpr std::uint64_t kVmemmapPhys = 0x100000;  // struct page array (64 bytes each)
constexpr std::uint64_t kPageSize = 64;
constexpr std::uint32_t kBuddy61 = ~0x80u;  // 6.1: PAGE_BUDDY_MAPCOUNT_VALUE = -129

std::string vmcoreinfo(const std::string& extra = "", const std::string& page_size = "64",
                       const std::string& mapcount_offset = "48") {
  return "OSRELEASE=6.1.0-test\nPAGESIZE=4096\nSIZE(page)=" + page_size +
         "\nOFFSET(page.flags)=0\nOFFSET(page.compound_head)=8\nOFFSET(page.mapping)=24\n"
         "OFFSET(page.private)=40\nOFFSET(page._mapcount)=" + mapcount_offset +
         "\nNUMBER(PG_lru)=4\nNUMBER(PG_swapcache)=10\nNUMBER(PAGE_BUDDY_MAPCOUNT_VALUE)=-129\n"
         "NUMBER(PAGE_OFFLINE_MAPCOUNT_VALUE)=-257\n" + extra;
}

struct PageKernel {
  VectorMemory ram{1 << 22};
  std::unique_ptr<Kernel> kernel;

  explicit PageKernel(const std::optional<std::string>& info) {
    map_kernel_image(ram);
    ram.put<std::uint64_t>(0x3000, kva(kVmemmapPhys));  // vmemmap_base
    // Every page starts as a kernel page: no mapping, no flags, _mapcount -1.
    for (std::uint64_t pfn = 0; pfn < 256; ++pfn) ram.put<std::uint32_t>(page(pfn) + 48, 0xffffffffu);
    KernelLayout layout;
    layout.page_table = 0x1000;
    kernel = Kernel::assemble(ram, layout, SymbolTable::from_kallsyms("ffffffff80003000 D vmemmap_base\n"),
                              linux_like_types(), "6.1.0-test", "", info);
  }
  static std::uint64_t page(std::uint64_t pfn) { return kVmemmapPhys + pfn * kPageSize; }
};

}  // namespace

TEST_CASE("struct pages sort into free blocks, user memory, page cache and the kernel's own", "[page-classes]") {
  PageKernel k(vmcoreinfo());
  // pfn 8: a free block of order 3 (pfns 8..15); pfn 20: anonymous (user) memory; pfn 21: a
  // page-cache page (a mapping and PG_lru); pfn 22: a mapping but no LRU (kept: kernel).
  k.ram.put<std::uint32_t>(PageKernel::page(8) + 48, kBuddy61);
  k.ram.put<std::uint64_t>(PageKernel::page(8) + 40, 3);
  k.ram.put<std::uint64_t>(PageKernel::page(20) + 24, kva(0x5000) | 1);
  k.ram.put<std::uint64_t>(PageKernel::page(21) + 24, kva(0x6000));
  k.ram.put<std::uint64_t>(PageKernel::page(21) + 0, 1ull << 4);
  k.ram.put<std::uint64_t>(PageKernel::page(22) + 24, kva(0x7000));
  // pfn 30 heads a compound user page whose tail is pfn 31.
  k.ram.put<std::uint64_t>(PageKernel::page(30) + 24, kva(0x5000) | 1);
  k.ram.put<std::uint64_t>(PageKernel::page(31) + 8, kva(PageKernel::page(30)) | 1);

  std::string why;
  auto classifier = PageClassifier::from_kernel(*k.kernel, &why);
  INFO(why);
  REQUIRE(classifier);
  std::vector<PageClass> out(64);
  classifier->classify(0, out);
  for (std::size_t pfn = 8; pfn < 16; ++pfn) CHECK(out[pfn] == PageClass::free);
  CHECK(out[7] == PageClass::kernel);
  CHECK(out[16] == PageClass::kernel);
  CHECK(out[20] == PageClass::user);
  CHECK(out[21] == PageClass::cache);
  CHECK(out[22] == PageClass::kernel);
  CHECK(out[30] == PageClass::user);
  CHECK(out[31] == PageClass::user);
}

TEST_CASE("a forged VMCOREINFO cannot send page classification outside struct page", "[page-classes][hostile]") {
  std::string why;
  // No VMCOREINFO at all: every page is kept (a larger dump, never a wrong one).
  PageKernel none(std::nullopt);
  CHECK_FALSE(PageClassifier::from_kernel(*none.kernel, &why));
  CHECK_THAT(why, Catch::Contains("no VMCOREINFO"));
  // An offset "-8" (two's complement: far beyond the struct) and one that ends past it.
  PageKernel negative(vmcoreinfo("", "64", "-8"));
  CHECK_FALSE(PageClassifier::from_kernel(*negative.kernel, &why));
  CHECK_THAT(why, Catch::Contains("outside struct page"));
  PageKernel past(vmcoreinfo("", "64", "62"));
  CHECK_FALSE(PageClassifier::from_kernel(*past.kernel, &why));
  for (const char* size : {"0", "8", "100", "1000000", "-64", "lots"}) {
    PageKernel absurd(vmcoreinfo("", size));
    INFO("SIZE(page)=" << size);
    CHECK_FALSE(PageClassifier::from_kernel(*absurd.kernel, &why));
  }
  // A free block claiming order 2^63 covers at most the pages asked about, and ends.
  PageKernel huge(vmcoreinfo());
  huge.ram.put<std::uint32_t>(PageKernel::page(4) + 48, kBuddy61);
  huge.ram.put<std::uint64_t>(PageKernel::page(4) + 40, 1ull << 63);
  auto classifier = PageClassifier::from_kernel(*huge.kernel, &why);
  REQUIRE(classifier);
  std::vector<PageClass> out(256);
  classifier->classify(0, out);
  CHECK(out[3] == PageClass::kernel);
  CHECK(out[4] == PageClass::free);
  // Pages whose struct page lies outside memory are kept.
  std::vector<PageClass> far(64);
  classifier->classify(1ull << 40, far);
  CHECK(std::all_of(far.begin(), far.end(), [](PageClass c) { return c == PageClass::kernel; }));
}

namespace {

// The immortal-repair-agent binary: IMMORTAL_REPAIR_AGENT (scripts/test sets it), else the one
// beside this build's tests.
std::string repair_agent_binary() {
  if (const char* env = std::getenv("IMMORTAL_REPAIR_AGENT"); env && *env) return env;
  return (std::filesystem::read_symlink("/proc/self/exe").parent_path().parent_path() / "repair-image" /
          "immortal-repair-agent").string();
}

// Guest RAM as the agent gets it: a file (a memfd) with the test kernel's bytes.
struct RamInFile {
  UniqueFd fd;
  vmm::Machine::RamFile file;
  explicit RamInFile(const VectorMemory& ram) {
    std::uint64_t size = ram.total_size();
    fd = UniqueFd(static_cast<int>(::memfd_create("test-ram", MFD_CLOEXEC)));
    REQUIRE(fd);
    std::vector<std::byte> bytes(size);
    ram.read(0, bytes);
    REQUIRE(::pwrite(fd.get(), bytes.data(), size, 0) == static_cast<ssize_t>(size));
    file = {fd.get(), size, {{0, 0, size}}};
  }
};

}  // namespace

TEST_CASE("the page-class agent reads struct page in its sandbox; the supervisor takes only what it may say",
          "[page-classes][agent]") {
  std::string agent = repair_agent_binary();
  INFO("agent " << agent);
  REQUIRE(std::filesystem::exists(agent));
  PageKernel k(vmcoreinfo());
  k.ram.put<std::uint32_t>(PageKernel::page(8) + 48, kBuddy61);  // pfns 8..15 free (order 3)
  k.ram.put<std::uint64_t>(PageKernel::page(8) + 40, 3);
  k.ram.put<std::uint64_t>(PageKernel::page(20) + 24, kva(0x5000) | 1);  // user
  k.ram.put<std::uint64_t>(PageKernel::page(21) + 24, kva(0x6000));      // page cache
  k.ram.put<std::uint64_t>(PageKernel::page(21) + 0, 1ull << 4);
  RamInFile ram(k.ram);
  SharedRamMemory memory(ram.file.fd, ram.file.size, ram.file.segments, /*writable=*/false);

  vmm::PageClassAgent classes(agent, ram.file, memory, *k.kernel);
  REQUIRE(classes.ready(Deadline::in(std::chrono::seconds(30))));
  auto now = classes.classify(Deadline::in(std::chrono::seconds(30)));
  INFO(classes.why());
  REQUIRE(now);
  REQUIRE(now->size() == 1);
  const auto& c = now->front().second;
  REQUIRE(c.size() == k.ram.total_size() / 4096);
  for (std::size_t pfn = 8; pfn < 16; ++pfn) CHECK(c[pfn] == PageClass::free);
  CHECK(c[7] == PageClass::kernel);
  CHECK(c[20] == PageClass::user);
  CHECK(c[21] == PageClass::cache);
  // It reads the guest as it is at each snapshot: pfn 30 becomes user memory.
  std::uint64_t anon = kva(0x5000) | 1;
  REQUIRE(::pwrite(ram.fd.get(), &anon, 8, static_cast<off_t>(PageKernel::page(30) + 24)) == 8);
  now = classes.classify(Deadline::in(std::chrono::seconds(30)));
  REQUIRE(now);
  CHECK(now->front().second[30] == PageClass::user);
}

TEST_CASE("a page-class agent that says nonsense, dies or is late leaves every page to be copied", "[page-classes][agent]") {
  PageKernel k(vmcoreinfo());
  RamInFile ram(k.ram);
  SharedRamMemory memory(ram.file.fd, ram.file.size, ram.file.segments, /*writable=*/false);
  FakeAgents fakes("class-agent");
  auto fake = [&](const std::string& name, const std::string& body) { return fakes.script(name, body); };
  // Bytes that are no class it may give (zero, 9, 255) are taken as kernel pages: copied.
  {
    vmm::PageClassAgent classes(fake("nonsense", "printf '\\001\\011\\377\\002\\003\\004' >&4; printf r >&5; "
                                                  "while [ -n \"$(head -c1 <&5)\" ]; do printf d >&5; done"),
                                ram.file, memory, *k.kernel);
    auto now = classes.classify(Deadline::in(std::chrono::seconds(30)));
    INFO(classes.why());
    REQUIRE(now);
    const auto& c = now->front().second;
    CHECK(c[0] == PageClass::kernel);
    CHECK(c[1] == PageClass::kernel);
    CHECK(c[2] == PageClass::kernel);
    CHECK(c[3] == PageClass::free);
    CHECK(c[4] == PageClass::user);
    CHECK(c[5] == PageClass::cache);
  }
  // It dies before it is ready: no classes, and why.
  {
    vmm::PageClassAgent classes(fake("dies", "echo 'cannot classify pages: no struct page' >&2; exit 4"), ram.file,
                                memory, *k.kernel);
    CHECK_FALSE(classes.classify(Deadline::in(std::chrono::seconds(30))));
    CHECK(classes.failed());
    CHECK_THAT(classes.why(), Catch::Contains("no struct page"));
  }
  // Ready, then it never answers: killed at the deadline.
  {
    vmm::PageClassAgent classes(fake("late", "printf r >&5; exec sleep 600"), ram.file, memory, *k.kernel);
    auto started = std::chrono::steady_clock::now();
    CHECK_FALSE(classes.classify(Deadline::in(std::chrono::seconds(2))));
    CHECK(std::chrono::steady_clock::now() - started < std::chrono::seconds(60));
    CHECK_THAT(classes.why(), Catch::Contains("did not answer in time"));
  }
}
