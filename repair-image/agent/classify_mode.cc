#include "agent/classify_mode.h"

#include "agent/agent_io.h"
#include "agent/sandbox.h"
#include "base/error.h"
#include "dump/page_classes.h"
#include "kernel/kernel_memory.h"
#include "kernel/vmcoreinfo.h"

#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <cerrno>
#include <cstring>
#include <memory>
#include <vector>

namespace immortal::repair {
namespace {

constexpr std::uint64_t kPage = 4096;
// Its own work beyond the mappings it has when it enters the sandbox: chunks of struct pages and
// one range's classes at a time.
constexpr std::uint64_t kClassifyHeadroom = 512ull << 20;
constexpr std::size_t kClassifyRequestLimit = 4 << 20;

struct ClassRange {
  std::uint64_t start = 0, pages = 0;
};

// Classes of every page of ranges, one byte each, into out (ranges in order, back to back).
void classify_into(const PageClassifier& classifier, const std::vector<ClassRange>& ranges, std::uint8_t* out) {
  std::vector<PageClass> classes;
  for (const auto& r : ranges) {
    classes.assign(r.pages, PageClass::kernel);
    classifier.classify(r.start / kPage, classes);
    std::memcpy(out, classes.data(), classes.size());
    out += classes.size();
  }
}

}  // namespace

// --classify: the request (JSON) on descriptor 0, guest RAM on 3 (read-only), the classes' memfd
// on 4 (one byte a page), the doorbell on 5 ('r' when ready; each 'c' answered by 'd').
int run_classify(int, char**) {
  try {
    // The request is the supervisor's own (numbers, and VMCOREINFO's text as the guest had it,
    // parsed only inside the sandbox). Guest RAM and the classes are mapped, not read, before it.
    auto request = nlohmann::json::parse(read_all(0, kClassifyRequestLimit, "the request"), nullptr, false);
    if (request.is_discarded() || !request.is_object()) fail(ExitCode::bad_input, "the request is not a JSON object");
    auto ram = map_request_ram(request, 3);
    std::vector<ClassRange> ranges;
    std::uint64_t total = 0;
    for (const auto& r : request.value("ranges", nlohmann::json::array())) {
      ClassRange range{request_number(r, "start"), request_number(r, "pages")};
      if (range.pages > (1ull << 32) || total + range.pages > (1ull << 32)) fail(ExitCode::bad_input, "too many pages");
      total += range.pages;
      ranges.push_back(range);
    }
    struct stat st{};
    if (::fstat(4, &st) != 0 || static_cast<std::uint64_t>(st.st_size) != total)
      fail(ExitCode::bad_input, "the classes' memfd is not one byte for each of the {} pages", total);
    void* classes = total ? ::mmap(nullptr, total, PROT_READ | PROT_WRITE, MAP_SHARED, 4, 0) : nullptr;
    if (classes == MAP_FAILED) fail_os(ExitCode::failure, "map the classes", errno);
    const auto& l = request.value("layout", nlohmann::json::object());
    KernelLayout layout{request_number(l, "page_table"), l.value("five_level", false), request_number(l, "phys_base"),
                        request_number(l, "page_offset_base"), request_number(l, "kaslr_offset")};
    std::uint64_t vmemmap_symbol = request_number(request, "vmemmap_base_symbol");
    std::string vmcoreinfo_text = request.value("vmcoreinfo", "");
    request = nullptr;
    ::close(0);
    ::close(3);
    ::close(4);
    enter_sandbox({address_space_in_use() + kClassifyHeadroom, 1 << 20});

    Vmcoreinfo vmcoreinfo = Vmcoreinfo::parse(vmcoreinfo_text);
    KernelMemory memory(*ram, layout);
    std::string why;
    auto classifier = PageClassifier::from_parts(memory, vmcoreinfo, vmemmap_symbol, &why);
    if (!classifier) {
      agent_say("cannot classify pages: " + why);
      return 4;
    }
    auto* out = static_cast<std::uint8_t*>(classes);
    // Once now, while the guest runs: the struct pages get mapped into this process here rather
    // than during a pause.
    classify_into(*classifier, ranges, out);
    write_all(5, "r");
    for (;;) {
      char c = doorbell_byte(5);
      if (!c) return 0;  // the supervisor is done with it
      if (c != 'c') continue;
      memory.forget_translations();  // the guest ran since the last time
      classify_into(*classifier, ranges, out);
      write_all(5, "d");
    }
  } catch (const std::exception& e) {
    agent_say(std::string("cannot classify pages: ") + e.what());
    return 1;
  }
}

}  // namespace immortal::repair
