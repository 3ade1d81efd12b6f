// The host's snapshot arena pool (vmm/recovery/arena_pool.h): two ArenaPool objects on one
// directory stand for two supervisors (each opens its own files, so their flocks exclude each
// other as separate processes' would).
#include "base/error.h"
#include "recovery/arena_pool.h"
#include "support/fake_kernel.h"

#include <catch2/catch.hpp>

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>

using namespace immortal;
using namespace immortal::vmm;

namespace {

struct PoolDir {
  std::string path = (std::filesystem::temp_directory_path() / ("immortal-arena-pool-" + std::to_string(::getpid())))
                         .string();
  ~PoolDir() { std::filesystem::remove_all(path); }
};

std::uint64_t file_size(const std::string& path) {
  struct stat st {};
  return ::stat(path.c_str(), &st) == 0 ? static_cast<std::uint64_t>(st.st_size) : 0;
}

// The memory a file holds (its size may be larger: holes hold none).
std::uint64_t allocated(const std::string& path) {
  struct stat st {};
  return ::stat(path.c_str(), &st) == 0 ? static_cast<std::uint64_t>(st.st_blocks) * 512 : 0;
}

}  // namespace

TEST_CASE("arena pool: two supervisors share the host's arenas, each in use by one snapshot at a time", "[arena-pool]") {
  PoolDir d;
  ArenaPool a(d.path), b(d.path);
  a.prepare(1 << 20, 1 << 20);
  b.prepare(1 << 20, 1 << 20);
  CHECK(a.sizes() == std::vector<std::uint64_t>(ArenaPool::kArenas, 1 << 20));

  auto first = a.acquire();
  REQUIRE(first);
  CHECK(first->size() == 1 << 20);
  auto second = b.acquire();
  REQUIRE(second);
  CHECK(second->data() != nullptr);
  CHECK_FALSE(a.acquire());  // both taken, one by each
  CHECK_FALSE(b.acquire());

  int reader = first->fd();
  CHECK((::fcntl(reader, F_GETFL) & O_ACCMODE) == O_RDONLY);  // the report agent cannot resize it
  CHECK(::ftruncate(reader, 0) != 0);
  std::byte* first_data = first->data();
  first.reset();  // released: free for the other supervisor
  auto again = b.acquire();
  REQUIRE(again);
  CHECK(again->data() != first_data);  // b's own mapping of the same file
  CHECK_FALSE(a.acquire());
}

TEST_CASE("arena pool: a snapshot's pages are zeroed on release, a dead holder's at the next prepare", "[arena-pool]") {
  PoolDir d;
  ArenaPool a(d.path), b(d.path);
  a.prepare(64 << 10, 64 << 10);
  b.prepare(64 << 10, 64 << 10);
  // A real snapshot: MemorySnapshot::take records the bytes it copied into the arena.
  std::vector<std::byte> page(MemorySnapshot::kPageSize, std::byte{0x5a});
  test::VectorMemory ram(MemorySnapshot::kPageSize);
  ram.write(0, page);
  std::byte* seen = nullptr;
  {
    auto arena = a.acquire();
    REQUIRE(arena);
    seen = arena->data();
    auto snap = MemorySnapshot::take(ram, unclassified_ram(ram), "test", arena);
    CHECK(snap->census().warm_arena);
    CHECK(std::memcmp(seen, page.data(), page.size()) == 0);
  }
  CHECK(std::to_integer<int>(seen[0]) == 0);
  CHECK(std::to_integer<int>(seen[MemorySnapshot::kPageSize - 1]) == 0);

  // A supervisor that died holding an arena left its bytes: whoever prepares next clears them.
  {
    int fd = ::open((d.path + "/arena-1").c_str(), O_WRONLY);
    REQUIRE(fd >= 0);
    REQUIRE(::pwrite(fd, "guest secret", 12, 100) == 12);
    ::close(fd);
  }
  b.prepare(64 << 10, 64 << 10);
  auto arenas = std::vector{b.acquire(), b.acquire()};
  for (const auto& arena : arenas) {
    REQUIRE(arena);
    for (std::uint64_t i = 0; i < arena->size(); ++i) REQUIRE(std::to_integer<int>(arena->data()[i]) == 0);
  }
}

TEST_CASE("arena pool: a supervisor leaves an arena another copies into alone, and prepares it once free", "[arena-pool]") {
  PoolDir d;
  ArenaPool a(d.path);
  CHECK(a.prepare(1 << 20, 1 << 20, 1));
  auto held = a.acquire();  // a's crash is being written
  REQUIRE(held);
  std::memset(held->data(), 0x77, 4096);
  ArenaPool b(d.path);  // a supervisor starting meanwhile
  CHECK_FALSE(b.prepare(2 << 20, 2 << 20, 1));  // held: try again later
  CHECK(b.sizes()[0] == 0);
  CHECK(file_size(d.path + "/arena-0") == 1 << 20);  // a's snapshot may have grown it: not touched
  CHECK(std::to_integer<int>(held->data()[0]) == 0x77);
  CHECK_FALSE(b.acquire());  // a holds it, and b has nothing mapped
  held.reset();
  CHECK(b.prepare(2 << 20, 2 << 20, 1));
  CHECK(b.sizes()[0] == 2 << 20);
  auto mine = b.acquire();  // free again: b's crash gets a prepared arena
  REQUIRE(mine);
  CHECK(mine->size() == 2 << 20);
}

TEST_CASE("arena pool: a snapshot grows its arena for the pages it fills in after the resume, and gives that back", "[arena-pool]") {
  PoolDir d;
  constexpr std::uint64_t kPage = MemorySnapshot::kPageSize;
  // A guest of 8 pages, all of the kernel class; pages 4-7 are known elsewhere (its code).
  test::VectorMemory ram(8 * kPage);
  for (std::uint64_t p = 0; p < 8; ++p) {
    std::vector<std::byte> page(kPage, std::byte(0x10 + p));
    ram.write(p * kPage, page);
  }
  KnownPages later;
  for (std::uint64_t p = 4; p < 8; ++p) later.pages.push_back(p * kPage);
  later.known = [] { return std::vector<KnownPages::Known>(4, KnownPages::Known::bytes); };
  later.copy = [](std::size_t i, std::byte* page) { std::memset(page, 0x40 + static_cast<int>(i), kPage); };

  ArenaPool a(d.path), b(d.path);
  REQUIRE(a.prepare(5 * kPage, 8 * kPage, 1));  // room for the pause's 4 pages and a margin; 8 pages' address space
  REQUIRE(b.prepare(5 * kPage, 5 * kPage, 1));
  {
    auto arena = a.acquire();
    REQUIRE(arena);
    CHECK(arena->size() == 5 * kPage);
    CHECK(arena->room() == 3 * kPage);
    auto snap = MemorySnapshot::take(ram, unclassified_ram(ram), "test", arena, {}, nullptr, &later, 1);
    CHECK(snap->census().warm_arena);  // the 4 pages copied in the pause fit
    CHECK(snap->census().pause_candidates == 4);
    CHECK(allocated(d.path + "/arena-0") == 5 * kPage);  // nothing allocated for the later ones yet
    CHECK(snap->fill_known() == 4);
    CHECK(allocated(d.path + "/arena-0") == 8 * kPage);  // now they are
    std::byte b7{};
    snap->read(7 * kPage, std::span(&b7, 1));
    CHECK(std::to_integer<int>(b7) == 0x43);
    snap->read(2 * kPage, std::span(&b7, 1));
    CHECK(std::to_integer<int>(b7) == 0x12);
    // The report agent maps the file as it is then: every slot is inside it.
    struct stat st {};
    REQUIRE(::fstat(snap->pages_fd(), &st) == 0);
    CHECK(static_cast<std::uint64_t>(st.st_size) >= snap->pages_bytes());
    CHECK_FALSE(b.prepare(5 * kPage, 5 * kPage, 1));  // b does not size a file a snapshot has grown
  }
  CHECK(allocated(d.path + "/arena-0") == 5 * kPage);  // punched out: the memory is given back
  CHECK(file_size(d.path + "/arena-0") == 8 * kPage);  // and the size kept (a repair VM may map it)
  CHECK(a.prepared_bytes(0) == 5 * kPage);
  CHECK(b.prepare(5 * kPage, 5 * kPage, 1));
  auto again = b.acquire();
  REQUIRE(again);
  CHECK(again->size() == 5 * kPage);
  for (std::uint64_t i = 0; i < again->size(); ++i) REQUIRE(std::to_integer<int>(again->data()[i]) == 0);

}

TEST_CASE("arena pool: arenas grow for the largest guest, never shrink, and go with the last user", "[arena-pool]") {
  PoolDir d;
  {
    ArenaPool small(d.path);
    small.prepare(1 << 20, 1 << 20);
    {
      ArenaPool large(d.path);
      large.prepare(3 << 20, 3 << 20);
      CHECK(file_size(d.path + "/arena-0") == 3 << 20);
      small.prepare(1 << 20, 1 << 20);  // maps the grown files: a smaller guest uses the larger arena
      CHECK(small.sizes() == std::vector<std::uint64_t>(ArenaPool::kArenas, 3 << 20));
      small.prepare(2 << 20, 2 << 20);
      CHECK(file_size(d.path + "/arena-0") == 3 << 20);
    }
    CHECK(std::filesystem::exists(d.path + "/arena-0"));  // `small` still uses them
    auto held = small.acquire();
    REQUIRE(held);
  }
  CHECK_FALSE(std::filesystem::exists(d.path + "/arena-0"));
  CHECK_FALSE(std::filesystem::exists(d.path + "/arena-1"));
  CHECK_FALSE(std::filesystem::exists(d.path));  // no empty directories left in /dev/shm either
}

TEST_CASE("arena pool: refuses a directory others can enter, and is named per runtime directory", "[arena-pool]") {
  PoolDir d;
  std::filesystem::create_directories(d.path);
  ::chmod(d.path.c_str(), 0755);
  CHECK_THROWS_AS(ArenaPool(d.path), Error);
  CHECK(ArenaPool::directory_for("/run/immortal") == ArenaPool::directory_for("/run/immortal/"));
  CHECK(ArenaPool::directory_for("/run/immortal") != ArenaPool::directory_for("/run/other"));
  CHECK(ArenaPool::directory_for("/run/immortal", "/x").rfind("/x/immortal-arenas-v2-" + std::to_string(::geteuid()) + "-", 0) == 0);
}

TEST_CASE("arena pool: a repair VM's windows are the arenas at a power-of-two size, holes past what is prepared", "[arena-pool]") {
  PoolDir d;
  constexpr std::uint64_t kPage = MemorySnapshot::kPageSize;
  ArenaPool a(d.path), b(d.path);
  REQUIRE(a.prepare(5 * kPage, 8 * kPage));
  auto windows = a.windows(6 * kPage);
  REQUIRE(windows.size() == ArenaPool::kArenas);
  for (std::size_t i = 0; i < windows.size(); ++i) {
    CHECK(windows[i].bytes == 8 * kPage);
    CHECK((::fcntl(windows[i].fd, F_GETFL) & O_ACCMODE) == O_RDONLY);
    CHECK(file_size(d.path + "/arena-" + std::to_string(i)) == 8 * kPage);
    CHECK(allocated(d.path + "/arena-" + std::to_string(i)) == 5 * kPage);  // the window costs nothing
    CHECK(a.prepared_bytes(i) == 5 * kPage);
  }
  // Another supervisor maps what is prepared, not the window's holes.
  REQUIRE(b.prepare(2 * kPage, 2 * kPage));
  CHECK(b.sizes() == std::vector<std::uint64_t>(ArenaPool::kArenas, 5 * kPage));
  CHECK(allocated(d.path + "/arena-0") == 5 * kPage);
  // A smaller window asked later never shrinks a file; a larger one grows it.
  CHECK(b.windows(2 * kPage)[0].bytes == 2 * kPage);
  CHECK(file_size(d.path + "/arena-0") == 8 * kPage);
  CHECK(b.windows(9 * kPage)[1].bytes == 16 * kPage);
  CHECK(file_size(d.path + "/arena-1") == 16 * kPage);
  // What a snapshot copies shows through the read-only descriptor.
  auto arena = a.acquire();
  REQUIRE(arena);
  std::memset(arena->data(), 0x6b, kPage);
  std::byte seen{};
  REQUIRE(::pread(windows[0].fd, &seen, 1, 0) == 1);
  CHECK(std::to_integer<int>(seen) == 0x6b);
}

TEST_CASE("arena pool: the spare's memory goes back when no one holds it; a stale mapping of it is not used", "[arena-pool]") {
  PoolDir d;
  ArenaPool a(d.path), b(d.path);
  a.prepare(1 << 20, 1 << 20);
  b.prepare(1 << 20, 1 << 20);
  const std::string spare = d.path + "/arena-1";
  CHECK(allocated(spare) >= (1u << 20));
  {
    // Held by another supervisor's snapshot: kept.
    auto first = b.acquire(), second = b.acquire();
    REQUIRE(second);
    CHECK(a.keep_prepared(1) == 0);
    CHECK(allocated(spare) >= (1u << 20));
  }
  CHECK(a.keep_prepared(1) == 1u << 20);
  CHECK(allocated(spare) == 0);
  CHECK(a.prepared_bytes(1) == 0);
  CHECK(a.prepared_bytes(0) == 1u << 20);  // the first stays
  // b still maps the spare as it was: it takes the first arena, never the spare's holes.
  auto first = b.acquire();
  REQUIRE(first);
  CHECK(first->pool_slot() == 0);
  CHECK_FALSE(b.acquire());
  first.reset();
  // Prepared again (a crash wants its spare): usable by everyone once each prepares it.
  a.prepare(1 << 20, 1 << 20);
  CHECK(allocated(spare) >= (1u << 20));
  b.prepare(1 << 20, 1 << 20);
  auto one = b.acquire(), two = b.acquire();
  CHECK(one);
  CHECK(two);
}
