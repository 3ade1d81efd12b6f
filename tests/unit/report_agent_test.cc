// The report agent's two crossings: the snapshot handed to it (its page index, read back by
// MemorySnapshot::adopt in the agent) and its answer taken back (accept_report_answer in the
// supervisor). The answer comes from a process that read a hostile guest's memory: whatever it
// says, the supervisor keeps only what passes, changes only copied pages, and says why.
#include "dump/memory_snapshot.h"
#include "recovery/report_agent.h"

#include "support/fake_agent.h"
#include "support/fake_kernel.h"

#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>

#include <sys/mman.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>

using namespace immortal;
using namespace immortal::test;
using immortal::vmm::accept_report_answer;
using nlohmann::json;

namespace {

constexpr std::uint64_t kPage = 4096;

// Pages 1, 2 and 5 of eight carry data (copied); the rest are zero (left out).
std::unique_ptr<MemorySnapshot> small_snapshot() {
  VectorMemory ram(8 * kPage);
  for (std::uint64_t p : {1, 2, 5}) ram.put_bytes(p * kPage + 16, "page " + std::to_string(p));
  return MemorySnapshot::take(ram, nullptr, true);
}

std::string text_at(const MemorySnapshot& s, std::uint64_t paddr, std::size_t n) {
  std::string out(n, '\0');
  s.read(paddr, std::as_writable_bytes(std::span(out.data(), n)));
  return out;
}

json good_answer() {
  return {{"taint", "DOE"},
          {"log", {{"records", {{{"ts_nsec", 1500000000}, {"text", "hello\x1b[31m"}}}}, {"panic_message", "Fatal exception"}}},
          {"cpus", {{{"cpu", 0}, {"at", "default_idle+0x5"}}, {{"cpu", 7}, {"task", {{"pid", 120}}}}}},
          {"pids", {0, 120}},
          {"layout", {{"page_offset_base", 0xffff888000000000ull}, {"kernel_vaddr", 0xffffffff81000000ull},
                      {"kernel_paddr", 0x1000000}, {"kernel_size", 0x2000000}}},
          {"writes", {{{"paddr", "0x1010"}, {"hex", "50414e4943"}}}},
          {"adjustments", {"panic_cpu set"}},
          {"problems", {"backtrace: cut"}}};
}

}  // namespace

TEST_CASE("a snapshot's index and pages, adopted in another mapping, read the same bytes", "[report-agent]") {
  auto snap = small_snapshot();
  REQUIRE(snap->pages_fd() >= 0);
  std::string index = snap->index();
  void* pages = ::mmap(nullptr, snap->pages_bytes(), PROT_READ | PROT_WRITE, MAP_PRIVATE, snap->pages_fd(), 0);
  REQUIRE(pages != MAP_FAILED);
  auto view = MemorySnapshot::adopt(index, static_cast<std::byte*>(pages), snap->pages_bytes());
  CHECK(view->census().total_pages == 8);
  CHECK(text_at(*view, 5 * kPage + 16, 6) == "page 5");
  CHECK(text_at(*view, 3 * kPage, 4) == std::string(4, '\0'));  // a zero page
  // A private mapping: what the agent writes stays its own.
  view->write(1 * kPage + 16, std::as_bytes(std::span("PAGE", 4)));
  CHECK(text_at(*view, 1 * kPage + 16, 4) == "PAGE");
  CHECK(text_at(*snap, 1 * kPage + 16, 4) == "page");
}

TEST_CASE("a malformed snapshot index is refused, never read out of bounds", "[report-agent]") {
  auto snap = small_snapshot();
  std::string index = snap->index();
  std::vector<std::byte> pages(snap->pages_bytes());
  auto adopt = [&](std::string_view i, std::uint64_t bytes) { return MemorySnapshot::adopt(i, pages.data(), bytes); };
  CHECK_NOTHROW(adopt(index, pages.size()));
  CHECK_THROWS(adopt("", pages.size()));
  CHECK_THROWS(adopt(index.substr(0, index.size() - 1), pages.size()));  // cut short
  CHECK_THROWS(adopt(index + "xxxx", pages.size()));                      // slots for more pages than ranges hold
  CHECK_THROWS(adopt(index, pages.size() - kPage));                       // a slot past the pages given
  std::string absurd = index;
  std::uint64_t many = 1ull << 40;
  absurd.replace(8, 8, reinterpret_cast<const char*>(&many), 8);  // the range count
  CHECK_THROWS(adopt(absurd, pages.size()));
  std::string wild_slot = index;
  std::uint32_t slot = 0x7fffffff;
  wild_slot.replace(wild_slot.size() - 4, 4, reinterpret_cast<const char*>(&slot), 4);
  CHECK_THROWS(adopt(wild_slot, pages.size()));
}

TEST_CASE("a well-formed report answer is taken, and its changes made to copied pages", "[report-agent]") {
  auto snap = small_snapshot();
  auto parts = accept_report_answer(good_answer().dump(), *snap, 2);
  INFO(json(parts.problems).dump());
  CHECK(parts.problems == std::vector<std::string>{"backtrace: cut"});
  CHECK(parts.taint == "DOE");
  CHECK(parts.pids == std::vector<int>{0, 120});
  CHECK(parts.cpus[1]["cpu"] == 1);  // by position, whatever it said
  CHECK(parts.layout.kernel_size == 0x2000000);
  CHECK(parts.adjustments == std::vector<std::string>{"panic_cpu set"});
  CHECK(text_at(*snap, 0x1010, 5) == "PANIC");
  // The guest's text reaches dmesg with its escape sequences made harmless.
  CHECK(parts.dmesg.find('\x1b') == std::string::npos);
  CHECK(parts.dmesg.find("hello") != std::string::npos);
}

TEST_CASE("a report answer's changes outside copied pages, or too many, are all refused", "[report-agent]") {
  const json good_one = {{"paddr", "0x5000"}, {"hex", "41"}};  // made only if all the others are
  for (json writes : {json{{{"paddr", "0x3000"}, {"hex", "00"}}},                          // a zero page: not copied
                      json{{{"paddr", "0x2ffe"}, {"hex", "00000000"}}},                     // runs from copied page 2 into 3
                      json{{{"paddr", "0xfffffffffffffffe"}, {"hex", "0000"}}},             // wraps
                      json{{{"paddr", "0x1000"}, {"hex", "zz"}}},                           // not hex
                      json{{{"paddr", 4096}, {"hex", "00"}}},                               // not a hex string
                      json{{{"paddr", "0x1000"}, {"hex", std::string(2 * 65 * 1024, 'a')}}},  // too many bytes
                      json(std::vector<json>(17, json{{"paddr", "0x1000"}, {"hex", "00"}})),  // too many changes
                      json{json::array()}}) {                                                 // not an object
    writes.push_back(good_one);
    auto snap = small_snapshot();
    json answer = good_answer();
    answer["writes"] = writes;
    auto parts = accept_report_answer(answer.dump(), *snap, 2);
    INFO(writes.dump().substr(0, 200));
    CHECK(json(parts.problems).dump().find("refused") != std::string::npos);
    CHECK(parts.adjustments.empty());
    CHECK(text_at(*snap, 0x5000, 1) == std::string(1, '\0'));
    CHECK(text_at(*snap, 0x1010, 6) == "page 1");
  }
}

TEST_CASE("a report answer that is not what it should be leaves the report without it, and says why", "[report-agent]") {
  auto snap = small_snapshot();
  {
    json a = good_answer();
    a["writes"] = "0x1000";
    CHECK_THAT(json(accept_report_answer(a.dump(), *snap, 2).problems).dump(), Catch::Contains("not a list"));
  }
  auto problems_of = [&](const std::string& text) { return json(accept_report_answer(text, *snap, 2).problems).dump(); };
  CHECK_THAT(problems_of("not json"), Catch::Contains("not a JSON object"));
  CHECK_THAT(problems_of("[1,2]"), Catch::Contains("not a JSON object"));
  CHECK_THAT(problems_of(std::string(100000, '[') + std::string(100000, ']')), Catch::Contains("nested deeper"));
  json a = good_answer();
  a["cpus"].push_back(json::object());
  CHECK_THAT(problems_of(a.dump()), Catch::Contains("described 3 CPUs"));
  a = good_answer();
  a["layout"]["kernel_vaddr"] = 0x1000;
  auto parts = accept_report_answer(a.dump(), *snap, 2);
  CHECK(parts.layout.kernel_size == 0);
  CHECK_THAT(json(parts.problems).dump(), Catch::Contains("layout is impossible"));
  a = good_answer();
  a["pids"] = {-5, 1 << 30};
  CHECK(accept_report_answer(a.dump(), *snap, 2).pids == std::vector<int>{0, 0});
  a = good_answer();
  a["log"]["records"] = {1, "x", nullptr};  // records that are not objects
  parts = accept_report_answer(a.dump(), *snap, 2);
  CHECK(parts.log.is_null());
  CHECK_THAT(json(parts.problems).dump(), Catch::Contains("kernel log is malformed"));
  a = good_answer();
  a["problems"] = std::vector<std::string>(1000, std::string(10000, 'p'));
  parts = accept_report_answer(a.dump(), *snap, 2);
  CHECK(parts.problems.size() <= 257);
  for (const auto& p : parts.problems) CHECK(p.size() <= 4096);
  for (const auto& t : {json(5), json(std::string(100, 'D'))}) {
    a = good_answer();
    a["taint"] = t;
    CHECK(accept_report_answer(a.dump(), *snap, 2).taint.is_null());
  }
}

TEST_CASE("a report agent that fails, lingers or overruns is killed in time and said in problems", "[report-agent]") {
  auto snap = small_snapshot();
  FakeAgents fakes("report-agent");
  auto agent = [&](const std::string& name, const std::string& body) { return fakes.script(name, body); };
  json request = {{"record", {{"registers", {json::object(), json::object()}}}}};  // two vCPUs
  auto run = [&](const std::string& path, std::chrono::seconds timeout) {
    auto started = std::chrono::steady_clock::now();
    auto parts = vmm::read_report_parts(path, *snap, fakes.dir(), request, timeout);
    return std::pair{parts, std::chrono::steady_clock::now() - started};
  };
  // An answer, then exit 0: taken.
  std::string answer = good_answer().dump();
  auto [good, good_took] = run(agent("good", "cat <<'END'\n" + answer + "\nEND"), std::chrono::seconds(30));
  CHECK(good.taint == "DOE");
  CHECK(good.pids == std::vector<int>{0, 120});
  // It closes its answer and lingers: killed at the deadline, not waited for forever.
  auto [lingering, lingering_took] = run(agent("linger", "exec >&-; exec sleep 600"), std::chrono::seconds(2));
  CHECK_THAT(json(lingering.problems).dump(), Catch::Contains("did not exit within 2 s"));
  CHECK(lingering_took < std::chrono::seconds(60));
  // It never answers: killed at the deadline.
  auto [silent, silent_took] = run(agent("silent", "exec sleep 600"), std::chrono::seconds(2));
  CHECK_THAT(json(silent.problems).dump(), Catch::Contains("took longer than 2 s"));
  CHECK(silent_took < std::chrono::seconds(60));
  // It fails: its last words are kept, escaped.
  auto [failing, failing_took] = run(agent("fail", "echo 'first line' >&2; printf 'cannot read \\033[31m' >&2; exit 4"),
                                     std::chrono::seconds(30));
  CHECK_THAT(json(failing.problems).dump(), Catch::Contains("exit status 4") && Catch::Contains("cannot read \\\\x1b[31m"));
  CHECK(failing.taint.is_null());
}
