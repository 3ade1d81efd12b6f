#include "engine/text_integrity.h"

#include "base/error.h"
#include "engine/repair_plan.h"
#include "kernel/modules.h"

#include <fmt/format.h>

#include <algorithm>
#include <cstring>
#include <map>

namespace immortal::repair {

namespace {

constexpr std::size_t kMaxListed = 256;         // corrupted ranges listed (then "truncated")
constexpr std::size_t kSampleExpected = 8;
constexpr std::uint64_t kMergeGap = 8;          // differences this close are one range
constexpr std::uint64_t kMaxSiteEntries = 1u << 20;
constexpr std::uint64_t kSiteSize = 5;          // a call, jmp or 5-byte nop
constexpr std::uint64_t kMaxInstruction = 15;
constexpr std::uint8_t kInt3 = 0xcc;

struct Range {
  std::uint64_t begin, end;
};

// Where the kernel rewrites its own code after boot: static keys (jump labels), static calls,
// their trampolines, BPF dispatchers, ftrace's call sites at function entry. Read from the
// crashed kernel's own tables, bounded.
class PatchSites {
 public:
  PatchSites(const Kernel& kernel, const HealthyImage& healthy, std::vector<std::string>& problems)
      : kernel_(kernel), healthy_(healthy) {
    const auto& symbols = kernel.symbols();
    auto table = [&](const char* begin, const char* end, std::uint64_t entry) {
      auto b = symbols.address_of(begin), e = symbols.address_of(end);
      if (b && e && *b <= *e) add_table(*b, (*e - *b) / entry, entry, problems);
    };
    // struct jump_entry { s32 code; s32 target; long key; }, struct static_call_site { s32 addr; s32 key; }
    table("__start___jump_table", "__stop___jump_table", 16);
    table("__start_static_call_sites", "__stop_static_call_sites", 8);
    try {
      const auto& t = kernel.types();
      auto jumps = t.field("module", "jump_entries"), njumps = t.field("module", "num_jump_entries");
      auto calls = t.field("module", "static_call_sites"), ncalls = t.field("module", "num_static_call_sites");
      for (const auto& m : read_modules(kernel).modules) {
        if (jumps && njumps)
          add_table(kernel.memory().read_u64(m.address + jumps->byte_offset()),
                    kernel.memory().read_value<std::uint32_t>(m.address + njumps->byte_offset()), 16, problems);
        if (calls && ncalls)
          add_table(kernel.memory().read_u64(m.address + calls->byte_offset()),
                    kernel.memory().read_value<std::uint32_t>(m.address + ncalls->byte_offset()), 8, problems);
      }
    } catch (const std::exception& e) {
      problems.push_back(std::string("the modules' patch sites are unreadable: ") + e.what());
    }
    std::sort(sites_.begin(), sites_.end(), [](const Range& a, const Range& b) { return a.begin < b.begin; });
  }

  // Is [begin, end) inside one place the kernel patches itself?
  bool covers(std::uint64_t begin, std::uint64_t end) {
    auto it = std::upper_bound(sites_.begin(), sites_.end(), begin, [](std::uint64_t a, const Range& r) { return a < r.begin; });
    for (int back = 0; back < 2 && it != sites_.begin(); ++back) {
      --it;
      if (it->begin <= begin && end <= it->end) return true;
    }
    auto s = kernel_.symbols().lookup(begin);
    if (!s || !(s->type() == 't' || s->type() == 'T')) return false;
    auto next = kernel_.symbols().next_after(*s);
    std::uint64_t size = next ? next->address - s->address : 0;
    if (s->name().rfind("__SCT__", 0) == 0 || s->name().rfind("bpf_dispatcher_", 0) == 0)
      return size && size <= 4096 && end <= s->address + size;
    // ftrace: a 5-byte site at the entry, after endbr64 when the function starts with one, that
    // holds a 5-byte nop or a call both before and now (or int3 while ftrace rewrites it).
    std::uint64_t site = s->address;
    const HealthyRegion* r = healthy_.find(site, 4 + kSiteSize);
    if (!r) return false;
    // One reader per region: differences come in address order, so each packed frame is unpacked once.
    auto reader = readers_.try_emplace(r, *r).first;
    const std::uint8_t* h = reader->second.at(site - r->address, 4 + kSiteSize);
    if (h[0] == 0xf3 && h[1] == 0x0f && h[2] == 0x1e && h[3] == 0xfa) {
      site += 4;
      h += 4;
    }
    if (begin < site || end > site + kSiteSize) return false;
    std::uint8_t now[kSiteSize];
    try {
      kernel_.memory().read(site, std::as_writable_bytes(std::span(now)));
    } catch (const std::exception&) {
      return false;
    }
    static const std::uint8_t kNopSite[kSiteSize] = {0x0f, 0x1f, 0x44, 0x00, 0x00};
    auto nop_or_call = [](const std::uint8_t* b) { return b[0] == 0xe8 || std::memcmp(b, kNopSite, kSiteSize) == 0; };
    return nop_or_call(h) && (nop_or_call(now) || now[0] == kInt3);
  }

 private:
  void add_table(std::uint64_t table, std::uint64_t count, std::uint64_t entry, std::vector<std::string>& problems) {
    if (!table || !count) return;
    if (count > kMaxSiteEntries || sites_.size() + count > 4 * kMaxSiteEntries) {
      problems.push_back(fmt::format("a patch-site table at {:#x} claims {} entries: ignored", table, count));
      return;
    }
    std::vector<std::uint8_t> raw(count * entry);
    try {
      kernel_.memory().read(table, std::as_writable_bytes(std::span(raw)));
    } catch (const std::exception& e) {
      problems.push_back(fmt::format("the patch-site table at {:#x} is unreadable: {}", table, e.what()));
      return;
    }
    for (std::uint64_t i = 0; i < count; ++i) {
      std::int32_t rel;
      std::memcpy(&rel, raw.data() + i * entry, 4);
      // Static-call site addresses carry flags in their low bits (STATIC_CALL_SITE_FLAGS = 3).
      std::uint64_t at = table + i * entry + static_cast<std::uint64_t>(static_cast<std::int64_t>(rel));
      if (entry == 8) at &= ~3ull;
      sites_.push_back({at, at + kSiteSize});
    }
  }

  const Kernel& kernel_;
  const HealthyImage& healthy_;
  std::vector<Range> sites_;
  std::map<const HealthyRegion*, RegionReader> readers_;
};

std::string describe(const Kernel& kernel, std::uint64_t address) { return kernel.symbols().describe(address); }

// How much of a region is read and compared at a time while it is intact.
constexpr std::size_t kCompareChunk = 64 << 10;

// The first i in [from, n) where a and b differ, or n. Equal blocks are passed with memcmp (the C
// library's vectorised one): almost all of the code is equal, and a byte loop over 25 MB costs
// hundreds of milliseconds where instructions are emulated (the repair VM under TCG).
std::size_t first_difference(const std::uint8_t* a, const std::uint8_t* b, std::size_t from, std::size_t n) {
  constexpr std::size_t kBlock = 4096;
  std::size_t i = from;
  while (i < n) {
    std::size_t len = std::min(kBlock, n - i);
    if (std::memcmp(a + i, b + i, len) != 0) break;
    i += len;
  }
  while (i < n && a[i] == b[i]) ++i;
  return i;
}

// With the supervisor's precheck: the parts of a region (which has physical runs) to read and
// compare — [begin, end) offsets, in order — the pieces the precheck found differing and
// whatever the crashed kernel no longer maps where it lay. nullopt when a part is not mapped.
std::optional<std::vector<std::pair<std::uint64_t, std::uint64_t>>> suspect_ranges(const Kernel& kernel,
                                                                                   const HealthyRegion& region,
                                                                                   const TextPrecheck& precheck) {
  std::vector<std::pair<std::uint64_t, std::uint64_t>> suspect;
  auto add = [&](std::uint64_t b, std::uint64_t e) {
    if (!suspect.empty() && suspect.back().second == b) suspect.back().second = e;
    else suspect.emplace_back(b, e);
  };
  const auto& d = precheck.differing;
  for (const auto& run : region.physical) {
    for (std::uint64_t at = run.offset, run_end = run.offset + run.size; at < run_end;) {
      auto m = kernel.memory().mapping_at(region.address + at);  // one walk per page that maps it
      if (!m) return std::nullopt;
      std::uint64_t n = std::min(m->bytes, run_end - at);
      if (m->physical != run.address + (at - run.offset)) {
        add(at, at + n);
      } else {
        std::uint64_t lo = region.address + at, hi = lo + n;
        for (auto it = std::lower_bound(d.begin(), d.end(), piece_of(lo)); it != d.end() && *it < hi; ++it)
          add(std::max(*it, lo) - region.address, std::min(*it + 0x1000, hi) - region.address);
      }
      at += n;
    }
  }
  return suspect;
}

}  // namespace

std::uint64_t IntegrityReport::corrupted_bytes() const {
  std::uint64_t n = 0;
  for (const auto& d : corrupted) n += d.now.size();
  return n;
}

const TextDifference* IntegrityReport::corruption_at(std::uint64_t address) const {
  for (const auto& d : corrupted)
    if (address + kMaxInstruction > d.address && address < d.address + d.now.size()) return &d;
  return nullptr;
}

nlohmann::json IntegrityReport::to_json() const {
  auto list = [](const std::vector<TextDifference>& ds) {
    nlohmann::json out = nlohmann::json::array();
    for (const auto& d : ds)
      out.push_back({{"address", fmt::format("{:#x}", d.address)}, {"length", d.now.size()}, {"region", d.region},
                     {"where", d.where}, {"cause", d.cause}, {"healthy", hex_bytes(d.healthy)}, {"now", hex_bytes(d.now)}});
    return out;
  };
  return {{"checked_bytes", checked_bytes}, {"regions", regions_checked}, {"corrupted", list(corrupted)},
          {"corrupted_bytes", corrupted_bytes()}, {"expected_differences", expected_differences},
          {"expected_sample", list(expected_sample)}, {"truncated", truncated}, {"problems", problems}};
}

IntegrityReport check_text_integrity(const Kernel& kernel, const HealthyImage& healthy,
                                     const std::vector<KnownPatch>& known_patches, const TextPrecheck* precheck) {
  IntegrityReport report;
  if (!healthy.release.empty() && healthy.release != kernel.release()) {
    report.problems.push_back(fmt::format("the healthy copy is of kernel {}, the guest runs {}: not compared", healthy.release,
                                          kernel.release()));
    return report;
  }
  // Module regions count only while that module is still loaded at the same place.
  std::map<std::string, std::pair<std::uint64_t, std::uint64_t>> live;  // name -> base, text_size
  try {
    ModuleList mods = read_modules(kernel);
    for (const auto& m : mods.modules) live[m.name] = {m.base, m.text_size};
    if (!mods.walk.complete) report.problems.push_back("the module list is damaged: " + mods.walk.problem);
  } catch (const std::exception& e) {
    report.problems.push_back(std::string("the module list is unreadable: ") + e.what());
  }

  std::optional<PatchSites> sites;  // read only when some difference needs classifying
  // Differences of now[0, n) (the region's bytes from base on) with h, the healthy copy of the same bytes.
  auto classify = [&](const HealthyRegion& region, const std::uint8_t* now, const std::uint8_t* h, std::size_t n,
                      std::uint64_t base) {
    std::size_t i = 0;
    while (i < n) {
      i = first_difference(now, h, i, n);
      if (i >= n) break;
      std::size_t end = i + 1, last = i;
      while (end < n && end - last <= kMergeGap) {
        if (now[end] != h[end]) last = end;
        ++end;
      }
      end = last + 1;
      TextDifference d{base + i, region.name, describe(kernel, base + i), "corrupted", {h + i, h + end}, {now + i, now + end}};
      std::uint64_t a = d.address, b = d.address + d.now.size();
      bool quarantine = std::any_of(known_patches.begin(), known_patches.end(), [&](const KnownPatch& p) {
        if (a < p.address || b > p.address + p.bytes.size()) return false;  // p: a KnownPatch
        return std::equal(d.now.begin(), d.now.end(), p.bytes.begin() + static_cast<std::ptrdiff_t>(a - p.address));
      });
      if (quarantine) {
        d.cause = "quarantine";
      } else if (region.kind == "text") {
        if (!sites) sites.emplace(kernel, healthy, report.problems);
        if (sites->covers(a, b)) d.cause = "patch-site";
        else if (d.now.size() == 1 && d.now[0] == kInt3) d.cause = "breakpoint";
      }
      if (d.cause == "corrupted") {
        if (report.corrupted.size() < kMaxListed) report.corrupted.push_back(std::move(d));
        else report.truncated = true;
      } else {
        ++report.expected_differences;
        if (report.expected_sample.size() < kSampleExpected) report.expected_sample.push_back(std::move(d));
      }
      i = end;
    }
  };

  std::vector<std::uint8_t> chunk, now;
  for (const auto& region : healthy.regions) {
    if (!region.module.empty()) {
      auto it = live.find(region.module);
      if (it == live.end() || (region.kind == "text" && (it->second.first != region.address ||
                                                         it->second.second != region.size()))) {
        report.problems.push_back(region.name + ": the module is no longer loaded where it was: not compared");
        continue;
      }
    }
    RegionReader h(region);  // the copy's bytes: unpacked only where they are compared
    if (precheck && !region.physical.empty()) {
      auto suspect = suspect_ranges(kernel, region, *precheck);
      if (!suspect) {
        report.problems.push_back(region.name + ": unreadable: kernel virtual address not mapped");
        continue;
      }
      std::vector<std::vector<std::uint8_t>> pieces;
      try {
        for (const auto& [b, e] : *suspect) {
          pieces.emplace_back(e - b);
          kernel.memory().read(region.address + b, std::as_writable_bytes(std::span(pieces.back())));
        }
      } catch (const std::exception& e) {
        report.problems.push_back(region.name + ": unreadable: " + e.what());
        continue;
      }
      report.checked_bytes += region.size();
      ++report.regions_checked;
      for (std::size_t k = 0; k < suspect->size(); ++k) {
        std::uint64_t at = (*suspect)[k].first;
        classify(region, pieces[k].data(), h.at(at, pieces[k].size()), pieces[k].size(), region.address + at);
      }
      continue;
    }
    // The common case, an intact region, compared a chunk at a time through one small buffer
    // (copying a whole 24 MB kernel text first cost a fresh buffer's page faults at every
    // crash: most of this check's time under TCG); a region that differs is read whole below.
    bool differs = false;
    try {
      for (std::size_t at = 0; at < region.size() && !differs; at += kCompareChunk) {
        std::size_t len = std::min<std::size_t>(kCompareChunk, region.size() - at);
        chunk.resize(len);
        kernel.memory().read(region.address + at, std::as_writable_bytes(std::span(chunk)));
        differs = std::memcmp(chunk.data(), h.at(at, len), len) != 0;
      }
      if (differs) {
        now.resize(region.size());
        kernel.memory().read(region.address, std::as_writable_bytes(std::span(now)));
      }
    } catch (const std::exception& e) {
      report.problems.push_back(region.name + ": unreadable: " + e.what());
      continue;
    }
    report.checked_bytes += region.size();
    ++report.regions_checked;
    if (differs) classify(region, now.data(), h.at(0, now.size()), now.size(), region.address);
  }
  return report;
}

}  // namespace immortal::repair
