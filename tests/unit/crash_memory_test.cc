// How the repair VM reads a crash (repair-image/engine/crash_memory.h, docs/protocol.md): the
// bundle's snapshot adopted from its arena and index, the kernel's unchanged code pages from the
// healthy copy; what crosses with the request (the index as the mailbox's attachment, the
// request's "snapshot"), and the agent's word on what it read. Untrusted input gets
// Error(bad_input) or a MemoryFault, never a read outside what was given.
#include "base/error.h"
#include "dump/memory_snapshot.h"
#include "engine/crash_memory.h"
#include "engine/repair_service.h"
#include "protocol/mailbox.h"
#include "repair/repair_engine.h"
#include "support/fake_kernel.h"

#include <catch2/catch.hpp>

#include <cstring>

using namespace immortal;

namespace {

constexpr std::uint64_t kPage = MemorySnapshot::kPageSize;

std::vector<std::byte> page_of(std::uint8_t value) { return std::vector<std::byte>(kPage, std::byte{value}); }

std::vector<std::byte> read_page(const PhysicalMemory& m, std::uint64_t paddr) {
  std::vector<std::byte> out(kPage);
  m.read(paddr, out);
  return out;
}

}  // namespace

TEST_CASE("a crash's snapshot as the repair VM reads it: copied pages from the arena, unchanged code from the healthy copy",
          "[repair]") {
  // Six pages of guest RAM: four of data, then two of the kernel's code (the healthy copy's one
  // region, which lay at guest-physical 0x4000 when it was taken).
  test::VectorMemory ram(6 * kPage);
  for (std::uint64_t p = 0; p < 4; ++p) ram.write(p * kPage, page_of(static_cast<std::uint8_t>(0x10 + p)));
  std::vector<std::uint8_t> code(2 * kPage);
  for (std::size_t i = 0; i < code.size(); ++i) code[i] = static_cast<std::uint8_t>(i * 13 + 1);
  ram.write(4 * kPage, std::as_bytes(std::span(code)));
  repair::HealthyImage image;
  image.regions.push_back(repair::HealthyRegion::holding("kernel text", "text", "", test::kva(0x4000), code));
  image.regions[0].physical = {{0, 0x4000, 2 * kPage}};
  // Packed, read in place, as the repair payload holds it: code is read a frame at a time.
  auto files = repair::packed_files(image);
  auto healthy = repair::HealthyImage::parse(files.index, files.blob, "t", repair::HealthyImage::Bytes::borrow);
  auto pages = repair::whole_code_pages(healthy, /*find_zeros=*/false);
  REQUIRE(pages.size() == 2);

  // The crash wrote a ud2 into the first code page: the precheck finds it differing.
  const std::uint8_t ud2[] = {0x0f, 0x0b};
  ram.write(0x4010, std::as_bytes(std::span(ud2)));
  repair::TextPrecheck precheck{{test::kva(0x4000)}};
  // The supervisor's copy (MemorySnapshot::take): the differing code page from RAM in the pause,
  // the unchanged one left for after the resume (it is not in the arena yet when the VM reads).
  KnownPages later;
  later.pages = {0x4000, 0x5000};
  later.known = [] { return std::vector<KnownPages::Known>{KnownPages::Known::no, KnownPages::Known::bytes}; };
  later.copy = [](std::size_t, std::byte* page) { std::memset(page, 0xee, kPage); };
  auto arena = SnapshotArena::make(8 * kPage);
  auto copy = MemorySnapshot::take(ram, unclassified_ram(ram), "test", arena, {}, nullptr, &later, 1);
  REQUIRE(copy->has_unfilled());

  // The repair VM's side: the index and the arena's slots, adopted without a census.
  // Without a census the index is read in place (the mailbox's attachment, in the VM): it must live on.
  const std::string index_bytes = copy->index();
  auto adopted = MemorySnapshot::adopt(index_bytes, arena->data(), copy->pages_bytes(), /*census=*/false);
  CHECK(adopted->index() == index_bytes);
  repair::SnapshotWithCode memory(std::move(adopted), pages, precheck);
  CHECK(memory.code_pages() == 1);
  for (std::uint64_t p = 0; p < 6; ++p) CHECK(read_page(memory, p * kPage) == read_page(ram, p * kPage));
  CHECK(memory.code_reads() == 1);
  // A read across the boundary of the snapshot's page and the healthy copy's.
  std::vector<std::byte> across(32);
  memory.read(0x5000 - 16, across);
  std::vector<std::byte> expected(32);
  ram.read(0x5000 - 16, expected);
  CHECK(across == expected);
  CHECK_THROWS_AS(memory.write(0, std::span(across).first(1)), MemoryFault);

  SECTION("without a precheck every page is the snapshot's (it then copied the code in the pause)") {
    later.known = [] { return std::vector<KnownPages::Known>{}; };
    auto full_arena = SnapshotArena::make(8 * kPage);
    auto full = MemorySnapshot::take(ram, unclassified_ram(ram), "test", full_arena, {}, nullptr, &later, 1);
    const std::string full_index = full->index();
    repair::SnapshotWithCode plain(MemorySnapshot::adopt(full_index, full_arena->data(), full->pages_bytes(), false), pages,
                                   std::nullopt);
    CHECK(plain.code_pages() == 0);
    for (std::uint64_t p = 0; p < 6; ++p) CHECK(read_page(plain, p * kPage) == read_page(ram, p * kPage));
  }
  SECTION("an index naming a slot past the pages given reads as no memory, without a census too") {
    std::string index = copy->index();
    std::uint32_t far = 1000;
    std::memcpy(index.data() + index.size() - 4 * 6, &far, 4);  // the first page's slot
    auto bad = MemorySnapshot::adopt(index, arena->data(), copy->pages_bytes(), /*census=*/false);
    CHECK_THROWS_AS(read_page(*bad, 0), MemoryFault);
    CHECK(read_page(*bad, kPage) == read_page(ram, kPage));
    CHECK_THROWS_AS(MemorySnapshot::adopt(index, arena->data(), copy->pages_bytes()), Error);  // with one: refused at once
  }
}

TEST_CASE("what the engine reads switches between the guest's RAM and a crash's snapshot", "[repair]") {
  auto ram = std::make_unique<test::VectorMemory>(2 * kPage);
  ram->write(0, page_of(0x11));
  test::VectorMemory other(2 * kPage);
  other.write(0, page_of(0x22));
  repair::EngineMemory memory(std::move(ram));
  CHECK(memory.reads_ram());
  CHECK(read_page(memory, 0) == page_of(0x11));
  memory.use(&other);
  CHECK_FALSE(memory.reads_ram());
  CHECK(read_page(memory, 0) == page_of(0x22));
  memory.use(nullptr);
  CHECK(read_page(memory, 0) == page_of(0x11));
  std::byte b{};
  CHECK_THROWS_AS(memory.write(0, std::span(&b, 1)), MemoryFault);
}

TEST_CASE("mailbox: a request's attachment crosses in the area past the mailbox; its length is bounded", "[repair]") {
  std::vector<std::uint64_t> memory(2 * repair::kMailboxSize / 8);
  repair::Mailbox host(memory.data(), 2 * repair::kMailboxSize), agent(memory.data(), 2 * repair::kMailboxSize);
  host.initialise();
  CHECK(host.attachment_capacity() == repair::kMailboxSize);
  std::string index(300000, 'x');
  index[7] = '\0';
  std::uint64_t seq = host.post_request("{}", index);
  CHECK(agent.request_seq() == seq);
  CHECK(agent.attachment() == index);
  host.post_request("{}");
  CHECK(agent.attachment().empty());
  CHECK_THROWS(host.post_request("{}", std::string(repair::kMailboxSize + 1, 'y')));
  // A length word beyond the area (no host writes one): bounded by it.
  std::uint64_t huge = ~0ull;
  std::memcpy(reinterpret_cast<char*>(memory.data()) + 312, &huge, 8);
  CHECK(agent.attachment().size() == repair::kMailboxSize);
  // A mailbox of the plain size has no attachment area.
  std::vector<std::uint64_t> small(repair::kMailboxSize / 8);
  repair::Mailbox plain(small.data());
  plain.initialise();
  CHECK(plain.attachment_capacity() == 0);
  CHECK_THROWS(plain.post_request("{}", "x"));
  CHECK(plain.attachment().empty());
}

TEST_CASE("a request's snapshot survives its JSON form; a malformed one is refused", "[repair]") {
  repair::RepairRequest request;
  request.record.vcpu = 0;
  request.record.registers.resize(1);
  request.snapshot = repair::SnapshotRef{1, 64 * kPage, 4096};
  request.snapshot_index = "not in the JSON";
  auto j = request.to_json();
  CHECK(j.dump().find("not in the JSON") == std::string::npos);
  auto back = repair::RepairRequest::from_json(j);
  REQUIRE(back.snapshot);
  CHECK(back.snapshot->arena == 1);
  CHECK(back.snapshot->pages_bytes == 64 * kPage);
  CHECK(back.snapshot->index_bytes == 4096);
  for (const auto& bad : {nlohmann::json{{"arena", 2}, {"pages_bytes", 4096}, {"index_bytes", 8}},
                          nlohmann::json{{"arena", -1}, {"pages_bytes", 4096}, {"index_bytes", 8}},
                          nlohmann::json{{"arena", 0}, {"pages_bytes", "4096"}, {"index_bytes", 8}},
                          nlohmann::json{{"arena", 0}, {"pages_bytes", 4096}}, nlohmann::json("snapshot")}) {
    j["snapshot"] = bad;
    CHECK_THROWS_AS(repair::RepairRequest::from_json(j), Error);
  }
  j.erase("snapshot");
  CHECK_FALSE(repair::RepairRequest::from_json(j).snapshot);
}

TEST_CASE("an agent's word on the memory it read is taken only as known values", "[repair]") {
  auto read = [](const nlohmann::json& memory) {
    vmm::RepairAnswer out;
    nlohmann::json answer = {{"ok", false}, {"error", "x"}, {"memory", memory}};
    vmm::read_repair_answer(answer.dump(), "vm", out);
    return out;
  };
  auto good = read({{"read", "snapshot"}, {"arena", 1}, {"pages", 9}, {"code_pages_from_healthy_copy", 3}, {"code_reads", 4},
                    {"code_read_ms", 1.5}, {"map_ms", 2.0}});
  CHECK(good.memory_read == "snapshot");
  CHECK(good.snapshot_arena == 1);
  CHECK(good.snapshot_pages == 9);
  CHECK(good.snapshot_code_reads == 4);
  CHECK(good.to_json()["memory"]["code_pages_from_healthy_copy"] == 3);
  CHECK(read({{"read", "guest RAM"}}).to_json()["memory"] == nlohmann::json{{"read", "guest RAM"}});
  auto odd = read({{"read", "the host's memory"}, {"arena", 7}});
  CHECK(odd.memory_read.empty());
  CHECK_FALSE(odd.to_json().contains("memory"));
  auto hostile = read({{"read", "snapshot"}, {"arena", 7}, {"pages", -1}, {"map_ms", 1e300}});
  CHECK(hostile.snapshot_arena == -1);
  CHECK(hostile.snapshot_pages == 0);
  CHECK(hostile.snapshot_map_ms == 0);
  CHECK(read(nlohmann::json("snapshot")).memory_read.empty());
}
