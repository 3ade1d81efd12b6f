#include "engine/text_precheck.h"

#include "base/error.h"
#include "engine/crash_record.h"

#include <fmt/format.h>

#include <sys/random.h>

#include <algorithm>
#include <cstring>

// Header-only: the engine library is linked into the static repair agent too.
#define XXH_INLINE_ALL
#include <xxhash.h>

namespace immortal::repair {

namespace {

constexpr std::uint64_t kPage = 0x1000;
constexpr std::uint64_t kChunk = 64 << 10;  // read a run this much at a time

// In address order, each piece once (two regions may share a page).
void sort_unique(std::vector<std::uint64_t>& pieces) {
  std::sort(pieces.begin(), pieces.end());
  pieces.erase(std::unique(pieces.begin(), pieces.end()), pieces.end());
}

PieceDigest digest(const std::uint8_t* bytes, std::size_t n, std::uint64_t seed) {
  XXH128_hash_t h = XXH3_128bits_withSeed(bytes, n, seed);
  return {h.low64, h.high64};
}

// The pieces of a region: its bytes within each 4 KiB virtual page it touches.
std::size_t piece_count(const HealthyRegion& region) {
  if (!region.size()) return 0;
  return static_cast<std::size_t>((piece_of(region.address + region.size() - 1) - piece_of(region.address)) / kPage + 1);
}

}  // namespace

TextPrecheck first_pieces(const HealthyImage& healthy) {
  TextPrecheck sample;
  for (const auto& r : healthy.regions)
    if (r.size()) sample.differing.push_back(piece_of(r.address));
  sort_unique(sample.differing);
  return sample;
}

void digest_pieces(HealthyImage& healthy) {
  std::uint64_t seed = 0;
  if (::getrandom(&seed, sizeof seed, 0) != sizeof seed) fail_os(ExitCode::failure, "getrandom (the code digests' key)", errno);
  healthy.digest_seed = seed;
  for (auto& region : healthy.regions) {
    region.digests.clear();
    region.digests.reserve(piece_count(region));
    RegionReader h(region);  // in address order: each packed frame unpacked once
    for (std::uint64_t at = 0; at < region.size();) {
      std::uint64_t n = std::min(region.size() - at, kPage - ((region.address + at) & (kPage - 1)));
      region.digests.push_back(digest(h.at(at, n), n, seed));
      at += n;
    }
  }
}

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
    RegionReader h(region);
    bool by_digest = region.digests.size() == piece_count(region);
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
          bool equal = false;
          if (readable && by_digest) {
            auto k = static_cast<std::size_t>((piece_of(va + done) - piece_of(region.address)) / kPage);
            equal = digest(buffer.data() + done, piece, healthy.digest_seed) == region.digests[k];
          } else if (readable) {
            equal = std::memcmp(buffer.data() + done, h.at(at + done, piece), piece) == 0;
          }
          if (!equal) {
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

std::vector<WholeCodePage> whole_code_pages(const HealthyImage& healthy, bool find_zeros) {
  std::vector<WholeCodePage> pages;
  static const std::uint8_t kZeros[kPage] = {};
  const PieceDigest zero_page = digest(kZeros, kPage, healthy.digest_seed);
  for (const auto& region : healthy.regions) {
    RegionReader h(region);
    bool by_digest = region.digests.size() == piece_count(region);
    for (const auto& run : region.physical) {
      if (run.offset > region.size() || run.size > region.size() - run.offset) continue;  // parse checks this too
      // Virtual pages inside [run's first byte, its end), where the physical address is page-aligned too.
      std::uint64_t va = region.address + run.offset, end = va + run.size;
      for (std::uint64_t page = (va + kPage - 1) & ~(kPage - 1); page + kPage <= end && page + kPage > page; page += kPage) {
        std::uint64_t pa = run.address + (page - va);
        if (pa & (kPage - 1)) break;  // the run's virtual and physical offsets disagree within a page
        std::uint64_t offset = page - region.address;
        bool zeros = false;
        if (!find_zeros) {
        } else if (by_digest) {  // a whole page is a whole piece: no unpacking
          zeros = region.digests[static_cast<std::size_t>((page - piece_of(region.address)) / kPage)] == zero_page;
        } else {
          const std::uint8_t* bytes = h.at(offset, kPage);
          zeros = std::all_of(bytes, bytes + kPage, [](std::uint8_t b) { return b == 0; });
        }
        pages.push_back({pa, page, &region, offset, zeros});
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

std::vector<bool> unchanged_code(const std::vector<WholeCodePage>& pages, const TextPrecheck& precheck) {
  std::vector<bool> out(pages.size(), false);
  for (std::size_t i = 0; i < pages.size(); ++i)
    out[i] = !std::binary_search(precheck.differing.begin(), precheck.differing.end(), pages[i].virt);
  return out;
}

}  // namespace immortal::repair
