// Fuzz target: the report agent's two crossings (vmm/recovery/report_agent.h). First byte even:
// the rest is the answer of a report agent that read a hostile guest, taken back for a small
// snapshot of 2 vCPUs; accept_report_answer must never throw or change a page the snapshot did
// not copy. First byte odd: the rest is a snapshot index, which adopt() (in the agent) must
// load or refuse (Error), and what it loads must read within the pages it was given.
#include "base/error.h"
#include "dump/memory_snapshot.h"
#include "recovery/report_agent.h"

#include "support/fake_kernel.h"

#include <cstdint>
#include <cstring>
#include <string_view>
#include <vector>

using namespace immortal;

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size == 0) return 0;
  std::string_view rest(reinterpret_cast<const char*>(data + 1), size - 1);
  if (data[0] % 2 == 0) {
    test::VectorMemory ram(8 * 4096);
    for (std::uint64_t p : {1, 2, 5}) ram.put_bytes(p * 4096, "copied");
    auto snapshot = MemorySnapshot::take(ram, nullptr, true);
    auto parts = vmm::accept_report_answer(rest, *snapshot, 2);
    if (parts.pids.size() != 2) __builtin_trap();
    char zero[8] = {};
    for (std::uint64_t p : {0, 3, 4, 6, 7}) {  // zero pages stay zero (and uncopied)
      char got[8];
      snapshot->read(p * 4096, std::as_writable_bytes(std::span(got, 8)));
      if (std::memcmp(got, zero, 8) != 0) __builtin_trap();
    }
    return 0;
  }
  std::vector<std::byte> pages(3 * 4096);
  try {
    auto view = MemorySnapshot::adopt(rest, pages.data(), pages.size());
    for (const auto& r : view->ranges())
      for (std::uint64_t a = r.start; a < r.end() && a < r.start + 64 * 4096; a += 4096) {
        std::uint64_t word;
        try {
          view->read(a, std::as_writable_bytes(std::span(&word, 1)));
        } catch (const MemoryFault&) {
        }
      }
  } catch (const Error&) {
  }
  return 0;
}
