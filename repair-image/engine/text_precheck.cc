#include "engine/text_precheck.h"

#include "base/error.h"
#include "engine/crash_record.h"

#include <fmt/format.h>

#include <algorithm>
#include <cstring>

namespace immortal::repair {

namespace {

constexpr std::uint64_t kPage = 0x1000;
constexpr std::uint64_t kChunk = 64 << 10;  // read a run this much at a time

// In address order, each piece once (two regions may share a page).
void sort_unique(std::vector<std::uint64_t>& pieces) {
  std::sort(pieces.begin(), pieces.end());
  pieces.erase(std::unique(pieces.begin(), pieces.end()), pieces.end());
}

}  // namespace

nlohmann::json TextPrecheck::to_json() const {
  nlohmann::json list = nlohmann::json::array();
  for (std::uint64_t a : differing) list.push_back(fmt::format("{:#x}", a));
  return {{"differing", list}};
}

TextPrecheck TextPrecheck::from_json(const nlohmann::json& j) {
  const auto& list = j.is_object() ? j.value("differing", nlohmann::json()) : nlohmann::json();
  if (!list.is_array() || list.size() > kMaxPrecheckPieces)
    fail(ExitCode::bad_input, "text_precheck: no list of differing pieces, or more than {}", kMaxPrecheckPieces);
  TextPrecheck p;
  for (const auto& v : list) {
    std::uint64_t a = parse_hex(v, "text_precheck: a differing piece");
    if (a != piece_of(a)) fail(ExitCode::bad_input, "text_precheck: {:#x} is not the start of a 4 KiB piece", a);
    p.differing.push_back(a);
  }
  sort_unique(p.differing);
  return p;
}

std::optional<TextPrecheck> precheck_text(const HealthyImage& healthy, const PhysicalMemory& memory) {
  TextPrecheck out;
  std::vector<std::uint8_t> buffer(kChunk);
  for (const auto& region : healthy.regions) {
    if (region.physical.empty() && region.size()) return std::nullopt;
    const std::uint8_t* h = region.code().data();
    for (const auto& run : region.physical) {
      // [at, end): offsets in the region, read a chunk at a time that ends on a virtual page.
      for (std::uint64_t at = run.offset, end = run.offset + run.size; at < end;) {
        std::uint64_t va = region.address + at;
        std::uint64_t n = std::min(end - at, kChunk - (va & (kPage - 1)));
        bool readable = true;
        try {
          memory.read(run.address + (at - run.offset), std::as_writable_bytes(std::span(buffer.data(), n)));
        } catch (const MemoryFault&) {
          readable = false;
        }
        // Each piece: the bytes of this chunk within one virtual page.
        for (std::uint64_t done = 0; done < n;) {
          std::uint64_t piece = std::min(n - done, kPage - ((va + done) & (kPage - 1)));
          if (!readable || std::memcmp(buffer.data() + done, h + at + done, piece) != 0) {
            if (out.differing.size() >= kMaxPrecheckPieces) return std::nullopt;
            out.differing.push_back(piece_of(va + done));
          }
          done += piece;
        }
        at += n;
      }
    }
  }
  sort_unique(out.differing);
  return out;
}

std::vector<WholeCodePage> whole_code_pages(const HealthyImage& healthy) {
  std::vector<WholeCodePage> pages;
  for (const auto& region : healthy.regions) {
    const std::uint8_t* h = region.code().data();
    for (const auto& run : region.physical) {
      if (run.offset > region.size() || run.size > region.size() - run.offset) continue;  // parse checks this too
      // Virtual pages inside [run's first byte, its end), where the physical address is page-aligned too.
      std::uint64_t va = region.address + run.offset, end = va + run.size;
      for (std::uint64_t page = (va + kPage - 1) & ~(kPage - 1); page + kPage <= end && page + kPage > page; page += kPage) {
        std::uint64_t pa = run.address + (page - va);
        if (pa & (kPage - 1)) break;  // the run's virtual and physical offsets disagree within a page
        pages.push_back({pa, page, h + (page - region.address)});
      }
    }
  }
  std::sort(pages.begin(), pages.end(), [](const auto& a, const auto& b) { return a.physical < b.physical; });
  // A physical page named twice (two mappings of one page) is left out: which copy is it?
  std::vector<WholeCodePage> once;
  for (std::size_t i = 0; i < pages.size(); ++i) {
    bool twice = (i > 0 && pages[i - 1].physical == pages[i].physical) ||
                 (i + 1 < pages.size() && pages[i + 1].physical == pages[i].physical);
    if (!twice) once.push_back(pages[i]);
  }
  return once;
}

std::vector<const std::uint8_t*> unchanged_code(const std::vector<WholeCodePage>& pages, const TextPrecheck& precheck) {
  std::vector<const std::uint8_t*> out(pages.size(), nullptr);
  for (std::size_t i = 0; i < pages.size(); ++i)
    if (!std::binary_search(precheck.differing.begin(), precheck.differing.end(), pages[i].virt)) out[i] = pages[i].bytes;
  return out;
}

}  // namespace immortal::repair
