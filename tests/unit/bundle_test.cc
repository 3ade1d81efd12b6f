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
#include <thread>

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


#include "bundle/archive.h"
#include "bundle/bundle_format.h"
#include "bundle/bundle_reader.h"
#include "bundle/bundle_writer.h"
#include "bundle/report_text.h"
#include "bundle/retention.h"
#include "base/error.h"
#include "base/size.h"

#include <fmt/format.h>

#include <filesystem>
#include <fstream>
#include <functional>

namespace {

namespace fs = std::filesystem;

std::string temp_dir(const char* stem) {
  std::string templ = std::string("/tmp/immortal-unit-") + stem + "-XXXXXX";
  REQUIRE(::mkdtemp(templ.data()) != nullptr);
  return templ;
}

// A small complete bundle: report, dmesg, a profile file, a tiny vmcore stand-in.
std::string make_bundle(const std::string& parent, const std::string& name, bool archive = false,
                        const std::string& created = "2026-11-23T10:00:00.000Z", const std::string& guest = "g") {
  bundle::BundleWriter w(parent, name);
  nlohmann::json report = {{"bundle", name}, {"guest", guest}, {"reason", "crash"},
                           {"crash", {{"id", 1}, {"kind", "oops"}, {"function", "drv_fn+0x5/0x20 [drv]"},
                                      {"task", {{"pid", 42}, {"comm", "victim"}}}}},
                           {"recovery", {{"decision", "resume"}, {"outcome", "recovered"}}}};
  w.add(bundle::kReportJson, report.dump());
  w.add(bundle::kDmesg, "[    1.000000] hello\n");
  w.add("profile/profile.json", "{}");
  w.add(bundle::kVmcore, std::string(10000, 'v'));
  return w.commit({{"created", created}, {"guest", guest}}, archive);
}

int open_error(const std::string& path, std::string* message = nullptr) {
  try {
    bundle::OpenedBundle::open(path);
  } catch (const Error& e) {
    if (message) *message = e.what();
    return e.exit_code();
  }
  return 0;
}

void edit_manifest(const std::string& dir, const std::function<void(nlohmann::json&)>& f) {
  auto m = nlohmann::json::parse(bundle::read_small_file(dir + "/manifest.json", 1 << 20));
  f(m);
  std::ofstream(dir + "/manifest.json", std::ios::trunc) << m.dump();
}

}  // namespace

TEST_CASE("a snapshot keeps the zero pages it is told to keep, and they can be written", "[bundle]") {
  VectorMemory ram(16 * 4096);
  ram.put_bytes(3 * 4096, "data");
  // Page 5: all zeros, kept (where the printk ring's next record goes); page 6: zeros, left out.
  auto snap = MemorySnapshot::take(ram, unclassified_ram(ram), "test", nullptr, {5 * 4096});
  CHECK(snap->census().copied_bytes == 2 * 4096);
  CHECK(snap->page_class(5 * 4096) == PageClass::kernel);
  CHECK(snap->page_class(6 * 4096) == PageClass::zero);
  std::uint64_t v = 0x1234;
  snap->write(5 * 4096 + 8, std::as_bytes(std::span(&v, 1)));
  CHECK(snap->read_value<std::uint64_t>(5 * 4096 + 8) == 0x1234);
  CHECK_THROWS_AS(snap->write(6 * 4096, std::as_bytes(std::span(&v, 1))), MemoryFault);
}

TEST_CASE("a snapshot taken with a prepared page index is the one taken without", "[bundle]") {
  VectorMemory ram(32 * 4096);
  for (std::uint64_t p : {0, 7, 8, 31}) ram.put_bytes(p * 4096 + 16, "page " + std::to_string(p));
  RamClasses classes = unclassified_ram(ram);
  classes[0].second[8] = PageClass::user;  // left out, as the page-class agent would say
  auto plain = MemorySnapshot::take(ram, classes, "test");
  auto prepared = MemorySnapshot::prepare(ram);
  auto filled = MemorySnapshot::take(ram, classes, "test", nullptr, {}, std::move(prepared));
  CHECK(filled->index() == plain->index());
  CHECK(filled->census().copied_bytes == 3 * 4096);
  CHECK(filled->page_class(8 * 4096) == PageClass::user);
  CHECK(filled->read_value<std::uint64_t>(7 * 4096 + 16) == plain->read_value<std::uint64_t>(7 * 4096 + 16));

  SECTION("an index prepared for other ranges is not used") {
    VectorMemory smaller(16 * 4096);
    auto other = MemorySnapshot::take(ram, classes, "test", nullptr, {}, MemorySnapshot::prepare(smaller));
    CHECK(other->index() == plain->index());
  }
  SECTION("classes made for other ranges are not trusted: every non-zero page is copied") {
    auto all = MemorySnapshot::take(ram, unclassified_ram(VectorMemory(16 * 4096)), "test", nullptr, {},
                                    MemorySnapshot::prepare(ram));
    CHECK(all->census().copied_bytes == 4 * 4096);
    CHECK(all->census().filter.find("did not match") != std::string::npos);
  }
}

TEST_CASE("a large snapshot copied by two threads holds every page as one thread would", "[bundle]") {
  // 6000 pages, enough for two parts: every third page all zeros (so the first part leaves unused
  // slots before the second's), every seventh a user page, and known pages on both sides of the
  // middle, some of them zeros.
  constexpr std::uint64_t kPages = 6000, kPage = 4096;
  VectorMemory ram(kPages * kPage);
  for (std::uint64_t p = 0; p < kPages; ++p)
    if (p % 3) ram.put_bytes(p * kPage + p % 64, "page " + std::to_string(p));
  RamClasses classes = unclassified_ram(ram);
  for (std::uint64_t p = 0; p < kPages; p += 7) classes[0].second[p] = PageClass::user;
  using Known = KnownPages::Known;
  KnownPages later{{10 * kPage, 11 * kPage, 12 * kPage, 4001 * kPage, 4002 * kPage, 5999 * kPage},
                   [&] { return std::vector<Known>{Known::bytes, Known::zeros, Known::no, Known::bytes, Known::zeros, Known::no}; },
                   [&](std::size_t, std::byte* page) { std::memset(page, 0xcc, kPage); }};
  std::vector<std::uint64_t> keep{3 * kPage, 4500 * kPage};  // zero pages kept, in each part
  auto snap = MemorySnapshot::take(ram, classes, "test", nullptr, keep, MemorySnapshot::prepare(ram), &later);
  snap->fill_known();
  std::uint64_t copied = 0, zero = 0, user = 0;
  for (std::uint64_t p = 0; p < kPages; ++p) {
    INFO("page " << p);
    bool known_code = p == 10 || p == 4001, known_zero = p == 11 || p == 4002;
    if (p % 7 == 0) {
      ++user;
      CHECK(snap->page_class(p * kPage) == PageClass::user);
    } else if (known_code) {
      ++copied;
      CHECK(snap->read_value<std::uint8_t>(p * kPage + 100) == 0xcc);
    } else if (known_zero || (p % 3 == 0 && !std::binary_search(keep.begin(), keep.end(), p * kPage))) {
      ++zero;
      CHECK(snap->page_class(p * kPage) == PageClass::zero);
    } else {
      ++copied;
      REQUIRE(snap->page_class(p * kPage) == PageClass::kernel);
      std::string want = p % 3 ? "page " + std::to_string(p) : std::string(4, '\0');
      std::string got(want.size(), '?');
      snap->read(p * kPage + (p % 3 ? p % 64 : 0), std::as_writable_bytes(std::span(got)));
      CHECK(got == want);
    }
  }
  CHECK(snap->census().copied_bytes == copied * kPage);
  CHECK(snap->census().pages[static_cast<std::size_t>(PageClass::zero)] == zero);
  CHECK(snap->census().pages[static_cast<std::size_t>(PageClass::user)] == user);
  CHECK(snap->census().total_pages == kPages);
  CHECK(snap->census().known_pages == 2);
  // The index and the pages read the same elsewhere (the report agent's view).
  REQUIRE(snap->pages_bytes() >= snap->census().copied_bytes);
  // Two parts (with two cores) leave the first part's zero pages as unused slots between them.
  if (std::thread::hardware_concurrency() >= 2) CHECK(snap->pages_bytes() > snap->census().copied_bytes);
  std::vector<std::byte> pages(snap->pages_bytes());
  REQUIRE(::pread(snap->pages_fd(), pages.data(), pages.size(), 0) == static_cast<ssize_t>(pages.size()));
  auto view = MemorySnapshot::adopt(snap->index(), pages.data(), pages.size());
  for (std::uint64_t p : {1, 2, 10, 2999, 3001, 4001, 4500, 5998}) {
    INFO("page " << p);
    CHECK(view->page_class(p * kPage) == snap->page_class(p * kPage));
    if (snap->page_class(p * kPage) == PageClass::kernel)
      CHECK(std::memcmp(view->page_data(p * kPage), snap->page_data(p * kPage), kPage) == 0);
  }
}

TEST_CASE("a snapshot reads the pages left for after the resume from guest RAM then", "[bundle]") {
  VectorMemory ram(16 * 4096);
  for (std::uint64_t p : {1, 2, 3}) ram.put_bytes(p * 4096, "guest " + std::to_string(p));
  RamClasses classes = unclassified_ram(ram);
  classes[0].second[3] = PageClass::user;  // not copied, left for later or not
  // Page 2 has code, page 5 is all zeros now, page 3 is a user page.
  KnownPages code{{2 * 4096, 3 * 4096, 5 * 4096}, {}, {}, /*after_resume=*/true};
  auto snap = MemorySnapshot::take(ram, classes, "test", nullptr, {}, nullptr, &code);
  CHECK(snap->census().after_resume_pages == 2);  // pages 2 and 5: kept, zeros or not
  CHECK(snap->census().known_pages == 0);
  CHECK(snap->census().copied_bytes == 3 * 4096);  // pages 1, 2 and 5
  CHECK(snap->page_class(3 * 4096) == PageClass::user);
  CHECK(snap->has_unfilled());
  CHECK_THROWS_AS(snap->read_value<std::uint8_t>(2 * 4096), MemoryFault);
  CHECK_THROWS(snap->fill_known());  // they need guest RAM
  // The guest runs again and changes page 5 and page 1: the later page is read as it is now.
  ram.put_bytes(5 * 4096, "late");
  ram.put_bytes(1 * 4096, "LATE");
  CHECK(snap->fill_known(&ram) == 2);
  CHECK_FALSE(snap->has_unfilled());
  std::string got(5, '?');
  snap->read(5 * 4096, std::as_writable_bytes(std::span(got.data(), 4)));
  CHECK(got.substr(0, 4) == "late");
  snap->read(2 * 4096, std::as_writable_bytes(std::span(got)));
  CHECK(got == "guest");
  snap->read(1 * 4096, std::as_writable_bytes(std::span(got.data(), 4)));
  CHECK(got.substr(0, 4) == "gues");  // copied in the pause
}

TEST_CASE("a snapshot takes known pages from where they are known, after the others, once filled", "[bundle]") {
  VectorMemory ram(16 * 4096);
  for (std::uint64_t p : {1, 2, 3, 4}) ram.put_bytes(p * 4096, "guest " + std::to_string(p));
  using Known = KnownPages::Known;
  std::vector<std::uint64_t> order;  // where the copy stood when known() was asked
  std::vector<std::size_t> copied;   // which known pages copy() was asked for
  KnownPages later{{2 * 4096, 3 * 4096, 4 * 4096, 9 * 4096},
                   [&]() -> std::vector<Known> {
                     order.push_back(1);
                     return {Known::bytes, Known::no, Known::zeros, Known::bytes};
                   },
                   [&](std::size_t i, std::byte* page) {
                     copied.push_back(i);
                     std::memset(page, 0x90, 4096);
                   }};
  auto snap = MemorySnapshot::take(ram, unclassified_ram(ram), "test", nullptr, {}, nullptr, &later);
  CHECK(order.size() == 1);
  // Page 2 known (0x90s), page 3 copied from RAM (nullptr), page 4 known all zeros (left out),
  // page 9 known too (RAM has zeros there: the known bytes count, not RAM's).
  CHECK(snap->census().known_pages == 2);
  CHECK(snap->page_class(4 * 4096) == PageClass::zero);
  CHECK(snap->census().copied_bytes == 4 * 4096);  // pages 1, 2, 3 and 9
  CHECK(snap->has_unfilled());
  CHECK_THROWS_AS(snap->read_value<std::uint8_t>(2 * 4096), MemoryFault);
  CHECK(snap->page_data(2 * 4096) == nullptr);
  ram.put_bytes(3 * 4096, "later");  // the guest runs again: what was copied stays
  CHECK(copied.empty());
  CHECK(snap->fill_known() == 2);
  CHECK(copied == std::vector<std::size_t>{0, 3});
  CHECK_FALSE(snap->has_unfilled());
  CHECK(snap->read_value<std::uint8_t>(2 * 4096 + 7) == 0x90);
  CHECK(snap->read_value<std::uint8_t>(9 * 4096) == 0x90);
  CHECK(snap->read_value<std::uint8_t>(3 * 4096) == 'g');
  CHECK(snap->read_value<std::uint8_t>(1 * 4096) == 'g');
  CHECK(snap->fill_known() == 0);

  SECTION("known() that cannot say copies every page from RAM") {
    KnownPages mute{{2 * 4096}, [] { return std::vector<Known>{}; }, [](std::size_t, std::byte*) {}};
    auto plain = MemorySnapshot::take(ram, unclassified_ram(ram), "test", nullptr, {}, nullptr, &mute);
    CHECK(plain->census().known_pages == 0);
    CHECK(plain->read_value<std::uint8_t>(2 * 4096) == 'g');
  }
  SECTION("a known page whose bytes cannot be had after all is read from RAM as it is then") {
    KnownPages failing{{2 * 4096}, [] { return std::vector<Known>{Known::bytes}; },
                       [](std::size_t, std::byte*) { throw Error(ExitCode::bad_input, "a damaged frame"); }};
    auto snap2 = MemorySnapshot::take(ram, unclassified_ram(ram), "test", nullptr, {}, nullptr, &failing);
    CHECK(snap2->census().known_pages == 1);
    CHECK(snap2->fill_known(&ram) == 1);
    CHECK(snap2->read_value<std::uint8_t>(2 * 4096) == 'g');
  }
}

TEST_CASE("a snapshot grows a borrowed arena only for its later pages, and loses them when it cannot", "[bundle]") {
  VectorMemory ram(8 * 4096);
  for (std::uint64_t p = 0; p < 8; ++p) ram.put_bytes(p * 4096, "guest " + std::to_string(p));
  using Known = KnownPages::Known;
  // Pages 4-7 are code: 4 and 5 known, 6 changed (copied from RAM in the pause), 7 known.
  KnownPages later{{4 * 4096, 5 * 4096, 6 * 4096, 7 * 4096},
                   [] { return std::vector<Known>{Known::bytes, Known::bytes, Known::no, Known::bytes}; },
                   [](std::size_t i, std::byte* page) { std::memset(page, 0x60 + static_cast<int>(i), 4096); }};
  std::vector<std::byte> memory(8 * 4096, std::byte{0});
  std::vector<std::uint64_t> grown;  // what the arena was asked to grow to
  bool can_grow = true;
  auto borrowed = [&](std::uint64_t size, std::uint64_t room) {
    return SnapshotArena::borrow(memory.data(), size, -1, [](std::uint64_t) {}, room, [&](std::uint64_t bytes) {
      if (!can_grow) throw Error(ExitCode::failure, "no memory to be had");
      grown.push_back(bytes);
    });
  };
  SECTION("the pause's pages fit, the later ones are given room after the resume") {
    auto snap = MemorySnapshot::take(ram, unclassified_ram(ram), "test", borrowed(4 * 4096, 4 * 4096), {}, nullptr, &later, 1);
    CHECK(snap->census().warm_arena);
    CHECK(snap->census().pause_candidates == 4);
    // Page 6 was copied in the pause, past the 4 pages the arena had: it grew for that one then.
    CHECK(grown == std::vector<std::uint64_t>{5 * 4096});
    CHECK(snap->read_value<std::uint8_t>(6 * 4096) == 'g');
    CHECK(snap->fill_known() == 3);
    CHECK(grown == std::vector<std::uint64_t>{5 * 4096, 8 * 4096});
    CHECK(snap->read_value<std::uint8_t>(7 * 4096) == 0x63);
    CHECK(snap->census().lost_pages == 0);
  }
  SECTION("an arena that cannot grow loses the later pages, not the snapshot") {
    can_grow = false;
    auto snap = MemorySnapshot::take(ram, unclassified_ram(ram), "test", borrowed(4 * 4096, 4 * 4096), {}, nullptr, &later, 1);
    CHECK(snap->census().warm_arena);
    CHECK(snap->fill_known() == 0);
    CHECK(snap->census().lost_pages == 4);  // page 6 in the pause, 4, 5 and 7 after it
    CHECK(snap->census().lost_why.find("no memory") != std::string::npos);
    CHECK(snap->census().known_pages == 0);
    CHECK(snap->pages_bytes() <= 4 * 4096);
    CHECK(snap->read_value<std::uint8_t>(3 * 4096) == 'g');
    for (std::uint64_t p : {4, 5, 6, 7}) {
      CHECK(snap->page_class(p * 4096) == PageClass::kernel);
      CHECK_THROWS_AS(snap->read_value<std::uint8_t>(p * 4096), MemoryFault);
    }
  }
  SECTION("an arena smaller than the pause's pages grows in the pause, and says by how much") {
    auto snap = MemorySnapshot::take(ram, unclassified_ram(ram), "test", borrowed(3 * 4096, 5 * 4096), {}, nullptr, &later, 1);
    CHECK(snap->census().warm_arena);
    CHECK(grown == std::vector<std::uint64_t>{8 * 4096});  // at the fourth page: all it may (less than 8 MiB)
    CHECK(snap->census().grown_in_pause_bytes == 5 * 4096);
    CHECK(snap->census().pause_slots == 5);  // 0-3 and the changed page 6
    CHECK(snap->fill_known() == 3);
    CHECK(grown.size() == 1);
    CHECK(snap->census().lost_pages == 0);
    for (std::uint64_t p : {0, 3, 6}) CHECK(snap->read_value<std::uint8_t>(p * 4096) == 'g');
    CHECK(snap->read_value<std::uint8_t>(7 * 4096) == 0x63);
  }
  SECTION("an arena that cannot grow to every page it might hold is not used") {
    auto snap = MemorySnapshot::take(ram, unclassified_ram(ram), "test", borrowed(3 * 4096, 4 * 4096), {}, nullptr, &later, 1);
    CHECK_FALSE(snap->census().warm_arena);
    CHECK(grown.empty());
  }
}

TEST_CASE("a snapshot's arena holds the pages that are not all zeros; on two threads, the second part grows it when "
          "the first part's zero pages leave it short",
          "[bundle]") {
  constexpr std::uint64_t kPages = 8192;  // twice what goes on two threads (MemorySnapshot::kTwoThreadPages)
  VectorMemory ram(kPages * 4096);
  // The first half all zeros but for every eighth page (and every eighth from the fourth on, past
  // its first bytes); the second half all written.
  for (std::uint64_t p = 0; p < kPages; ++p) {
    if (p >= kPages / 2 || p % 8 == 0) ram.put_bytes(p * 4096, "page " + std::to_string(p));
    if (p < kPages / 2 && p % 8 == 4) ram.put_bytes(p * 4096 + 2048, "late");
  }
  const std::uint64_t written = kPages / 2 + kPages / 16 + kPages / 16;
  KernelPageCount count = touch_kernel_pages(ram, unclassified_ram(ram));
  CHECK(count.pages == kPages);
  CHECK(count.non_zero == written);
  CHECK(count.pause_slots == written);
  // On two threads the second part's slots start after all of the first part's pages: the arena
  // must hold the first half whole.
  const bool two_threads = std::thread::hardware_concurrency() >= 2;
  KernelPageCount split = touch_kernel_pages(ram, unclassified_ram(ram), {}, 2);
  CHECK(split.pause_slots == (two_threads ? kPages : written));
  // Pages left for after the pause take no slot in it.
  std::vector<std::uint64_t> later;
  for (std::uint64_t p = kPages - 16; p < kPages; ++p) later.push_back(p * 4096);
  CHECK(touch_kernel_pages(ram, unclassified_ram(ram), later).pause_slots == written - 16);
  std::vector<std::byte> memory(kPages * 4096, std::byte{0});
  std::vector<std::uint64_t> grown;
  auto borrowed = [&](std::uint64_t size) {
    return SnapshotArena::borrow(memory.data(), size, -1, [](std::uint64_t) {}, kPages * 4096 - size,
                                 [&](std::uint64_t bytes) { grown.push_back(bytes); });
  };
  SECTION("one thread: the written pages fit, nothing grows") {
    auto snap = MemorySnapshot::take(ram, unclassified_ram(ram), "test", borrowed(written * 4096), {}, nullptr, nullptr, 1);
    CHECK(snap->census().warm_arena);
    CHECK(grown.empty());
    CHECK(snap->census().grown_in_pause_bytes == 0);
    CHECK(snap->census().pause_slots == written);
  }
  SECTION("two threads into an arena as large as touch_kernel_pages says: nothing grows") {
    auto snap = MemorySnapshot::take(ram, unclassified_ram(ram), "test", borrowed(split.pause_slots * 4096), {}, nullptr, nullptr, 2);
    CHECK(snap->census().warm_arena);
    CHECK(grown.empty());
    CHECK(snap->census().pause_slots == split.pause_slots);
    CHECK(snap->read_value<std::uint8_t>((kPages - 1) * 4096 + 5) == std::to_string(kPages - 1)[0]);
  }
  SECTION("two threads: the second part starts after the first part's candidates, and grows the arena") {
    auto snap = MemorySnapshot::take(ram, unclassified_ram(ram), "test", borrowed(written * 4096), {}, nullptr, nullptr, 2);
    CHECK(snap->census().warm_arena);
    CHECK_FALSE(grown.empty());
    CHECK(snap->census().grown_in_pause_bytes > 0);
    CHECK(snap->census().pause_slots == (two_threads ? kPages : written));
    CHECK(snap->census().lost_pages == 0);
    for (std::uint64_t p : {std::uint64_t{0}, std::uint64_t{8}, kPages / 2, kPages - 1})
      CHECK(snap->read_value<std::uint8_t>(p * 4096 + 5) == std::to_string(p)[0]);
    CHECK(snap->page_class(4096) == PageClass::zero);
    CHECK(snap->read_value<std::uint8_t>(4 * 4096 + 2048) == 'l');
  }
}

TEST_CASE("bundles are written atomically with a manifest that the reader checks", "[bundle]") {
  std::string parent = temp_dir("bundles");
  std::string path = make_bundle(parent, "g-1");
  CHECK(path == parent + "/g-1");
  CHECK_FALSE(fs::exists(parent + "/.g-1.partial"));
  auto b = bundle::OpenedBundle::open(path);
  CHECK(b.report()["crash"]["task"]["pid"] == 42);
  CHECK(b.has(bundle::kVmcore));
  CHECK(b.manifest()["version"] == bundle::kFormatVersion);
  CHECK(bundle::render_report(b.report()).find("drv_fn+0x5/0x20 [drv]") != std::string::npos);

  SECTION("a writer that never commits leaves nothing a reader accepts") {
    std::string mine = fmt::format("{}/.g-2.{}.partial", parent, ::getpid());
    {
      bundle::BundleWriter w(parent, "g-2");
      w.add(bundle::kReportJson, "{}");
      // Simulate writers killed here: the partial directory survives the process. One whose
      // writer is gone (no such pid), one of a live writer, another guest's.
      fs::copy(mine, parent + "/.g-3.999999999.partial");
      fs::copy(mine, fmt::format("{}/.g-4.{}.partial", parent, ::getppid()));
      fs::copy(mine, parent + "/.other-5.999999999.partial");
    }
    CHECK_FALSE(fs::exists(mine));  // an abandoned writer cleans up after itself
    std::string message;
    CHECK(open_error(parent + "/.g-3.999999999.partial", &message) == 3);
    CHECK(message.find("never completed") != std::string::npos);
    auto listed = bundle::list_bundles(parent);
    REQUIRE(listed.size() == 1);  // the partial one is not a bundle
    CHECK(bundle::remove_stale_partials(parent, "g-") == std::vector<std::string>{".g-3.999999999.partial"});
    CHECK(fs::exists(fmt::format("{}/.g-4.{}.partial", parent, ::getppid())));
    CHECK(fs::exists(parent + "/.other-5.999999999.partial"));
  }
  SECTION("damage is named: truncated, missing, changed, newer, garbage") {
    std::string copy = parent + "/copy";
    fs::copy(path, copy, fs::copy_options::recursive);
    std::string message;
    SECTION("truncated vmcore") {
      fs::resize_file(copy + "/vmcore", 100);
      CHECK(open_error(copy, &message) == 3);
      CHECK(message.find("truncated") != std::string::npos);
    }
    SECTION("changed bytes") {
      std::ofstream(copy + "/dmesg.txt", std::ios::in | std::ios::out) << "X";
      CHECK(open_error(copy, &message) == 3);
      CHECK(message.find("SHA-256") != std::string::npos);
    }
    SECTION("missing file") {
      fs::remove(copy + "/report.json");
      CHECK(open_error(copy, &message) == 3);
      CHECK(message.find("missing") != std::string::npos);
    }
    SECTION("no manifest") {
      fs::remove(copy + "/manifest.json");
      CHECK(open_error(copy, &message) == 3);
    }
    SECTION("newer format version") {
      edit_manifest(copy, [](nlohmann::json& m) { m["version"] = 99; });
      CHECK(open_error(copy, &message) == static_cast<int>(ExitCode::unsupported));
      CHECK(message.find("newer") != std::string::npos);
    }
    SECTION("unsafe file names") {
      edit_manifest(copy, [](nlohmann::json& m) { m["files"][0]["name"] = "../../etc/passwd"; });
      CHECK(open_error(copy, &message) == 3);
    }
    SECTION("wrong types") {
      edit_manifest(copy, [](nlohmann::json& m) { m["files"] = "many"; });
      CHECK(open_error(copy) == 3);
      edit_manifest(copy, [](nlohmann::json& m) { m = nlohmann::json::array(); });
      CHECK(open_error(copy) == 3);
    }
    SECTION("garbage") {
      std::ofstream(copy + "/manifest.json", std::ios::trunc) << "\x01\x02 not json";
      CHECK(open_error(copy, &message) == 3);
      CHECK_FALSE(message.empty());
    }
  }
  fs::remove_all(parent);
}

TEST_CASE("a bundle's large vmcore can be verified beside its reader, and its damage is still named", "[bundle]") {
  std::string parent = temp_dir("beside");
  bundle::BundleWriter w(parent, "g-big");
  w.add(bundle::kReportJson, nlohmann::json{{"bundle", "g-big"}, {"guest", "g"}}.dump());
  w.add(bundle::kVmcore, std::string(20u << 20, 'v'));  // above the size checked on a thread
  std::string path = w.commit({{"created", "2026-11-23T10:00:00.000Z"}, {"guest", "g"}}, false);
  using V = bundle::OpenedBundle::Verification;
  {
    auto b = bundle::OpenedBundle::open(path, {}, V::beside);
    CHECK_NOTHROW(b.verified());
    CHECK_NOTHROW(b.verified());  // idempotent
  }
  std::ofstream(path + "/vmcore", std::ios::in | std::ios::out) << "X";  // same size, other bytes
  CHECK(open_error(path) == 3);  // checked at once by default
  {
    auto b = bundle::OpenedBundle::open(path, {}, V::beside);  // opens: the check runs beside
    CHECK(b.report()["bundle"] == "g-big");
    try {
      b.verified();
      FAIL("a damaged vmcore passed");
    } catch (const Error& e) {
      CHECK(e.exit_code() == 3);
      CHECK(std::string(e.what()).find("vmcore does not match its SHA-256") != std::string::npos);
    }
  }
  {
    auto b = bundle::OpenedBundle::open(path, {}, V::beside);  // never asked: the destructor waits for it
  }
  fs::remove_all(parent);
}

TEST_CASE("a bundle packed as .tar.zst opens like its directory; hostile archives are refused", "[bundle]") {
  std::string parent = temp_dir("archive");
  std::string packed = make_bundle(parent, "g-9", true);
  CHECK(packed == parent + "/g-9.tar.zst");
  CHECK_FALSE(fs::exists(parent + "/g-9"));
  {
    auto b = bundle::OpenedBundle::open(packed);
    CHECK(b.report()["crash"]["kind"] == "oops");
    CHECK(fs::exists(b.file("vmcore")));
  }
  // Not an archive at all; an archive whose entry escapes with "..".
  std::ofstream(parent + "/junk.tar.zst") << std::string(5000, 'j');
  CHECK(open_error(parent + "/junk.tar.zst") == 3);
  std::string evil_src = parent + "/evil-src";
  fs::create_directories(evil_src + "/x");
  std::ofstream(evil_src + "/x/manifest.json") << "{}";
  bundle::pack_directory(evil_src + "/x", "..", parent + "/evil.tar.zst");
  CHECK(open_error(parent + "/evil.tar.zst") == 3);
  CHECK_FALSE(fs::exists(parent + "/manifest.json"));
  fs::remove_all(parent);
}

TEST_CASE("retention removes the oldest bundles first and never the newest", "[bundle]") {
  std::string parent = temp_dir("retention");
  // Named out of order: their manifests' times decide.
  const char* names[] = {"g-b", "g-d", "g-a", "g-c"};
  const char* times[] = {"2026-01-01T00:00:00.000Z", "2026-02-01T00:00:00.000Z", "2026-03-01T00:00:00.000Z",
                         "2026-04-01T00:00:00.000Z"};
  for (int i = 0; i < 4; ++i) make_bundle(parent, names[i], false, times[i], "g");
  // What else a shared directory holds is never touched: another guest's bundle, a directory of
  // someone's with a manifest.json, an archive by another name.
  make_bundle(parent, "g-other-guest", false, "2025-01-01T00:00:00.000Z", "other");
  fs::create_directories(parent + "/g-notes");
  std::ofstream(parent + "/g-notes/manifest.json") << "{\"created\": \"2020-01-01T00:00:00.000Z\"}";
  std::ofstream(parent + "/photos.tar.zst") << "x";
  const bundle::BundleOwner owner{"g", "g-"};
  auto removed = bundle::apply_retention(parent, {2, 0}, owner);
  CHECK(removed == std::vector<std::string>{parent + "/g-b", parent + "/g-d"});
  // A size limit smaller than one bundle still keeps the newest.
  removed = bundle::apply_retention(parent, {0, 1}, owner);
  CHECK(removed == std::vector<std::string>{parent + "/g-a"});
  REQUIRE(bundle::list_bundles(parent, &owner).size() == 1);
  CHECK(bundle::list_bundles(parent, &owner)[0].path == parent + "/g-c");
  CHECK(fs::exists(parent + "/g-other-guest"));
  CHECK(fs::exists(parent + "/g-notes/manifest.json"));
  CHECK(fs::exists(parent + "/photos.tar.zst"));
  // Bundles are private: directories 0700, files 0600.
  CHECK((fs::status(parent + "/g-c").permissions() & fs::perms::all) == fs::perms::owner_all);
  CHECK((fs::status(parent + "/g-c/vmcore").permissions() & fs::perms::all) ==
        (fs::perms::owner_read | fs::perms::owner_write));
  // One size parser for every option: a bare number is MiB everywhere.
  CHECK(parse_size("20G", "--bundle-max-size") == 20ull << 30);
  CHECK(parse_size("512M", "--bundle-max-size") == 512ull << 20);
  CHECK(parse_size("512", "--bundle-max-size") == 512ull << 20);
  CHECK(parse_size("4KiB", "--bundle-max-size") == 4096);
  CHECK(parse_size("0", "--bundle-max-size") == 0);
  CHECK_THROWS_AS(parse_size("lots", "--bundle-max-size"), Error);
  CHECK_THROWS_AS(parse_size("5Q", "--bundle-max-size"), Error);
  CHECK_THROWS_AS(parse_size("-1G", "--bundle-max-size"), Error);
  CHECK_THROWS_AS(parse_size("99999999999999999999G", "--bundle-max-size"), Error);
  try {
    parse_size("5Q", "--bundle-max-size");
  } catch (const Error& e) {
    CHECK_THAT(e.what(), Catch::Contains("--bundle-max-size"));
    CHECK(e.exit_code() == static_cast<int>(ExitCode::usage));
  }
  fs::remove_all(parent);
}

TEST_CASE("retention by two writers finishing together still keeps the newest bundles", "[bundle]") {
  // Two bundles of one guest committed at once (a crash during an on-demand bundle) each run the
  // policy: neither may take the other's removals for failures and remove newer bundles instead.
  const bundle::BundleOwner owner{"g", "g-"};
  for (int round = 0; round < 20; ++round) {
    std::string parent = temp_dir("retention-race");
    for (int i = 0; i < 8; ++i)
      make_bundle(parent, fmt::format("g-{}", i), false, fmt::format("2026-01-01T00:00:{:02}.000Z", i), "g");
    std::vector<std::thread> writers;
    for (int w = 0; w < 4; ++w) writers.emplace_back([&] { bundle::apply_retention(parent, {2, 0}, owner); });
    for (auto& t : writers) t.join();
    auto kept = bundle::list_bundles(parent, &owner);
    INFO("round " << round);
    REQUIRE(kept.size() == 2);
    CHECK(kept[0].path == parent + "/g-6");
    CHECK(kept[1].path == parent + "/g-7");
    fs::remove_all(parent);
  }
}

TEST_CASE("the report renders from any JSON without failing", "[bundle]") {
  for (const char* text : {"{}", "[]", "null", "{\"crash\": 5, \"cpus\": {\"a\": 1}}",
                           "{\"crash\": {\"task\": []}, \"cpus\": [1, \"x\", {\"backtrace\": 3}]}",
                           "{\"memory\": {\"pages\": []}, \"timings\": {\"write_ms\": \"soon\"}}"}) {
    INFO(text);
    CHECK_NOTHROW(bundle::render_report(nlohmann::json::parse(text)));
  }
}
