// The supervisor's half of the code integrity check (engine/text_integrity.h): the healthy copy
// compared with the crashed guest's memory where that code lay when the copy was taken
// (HealthyRegion::physical), a page at a time, at the host's speed. It reads guest-physical
// bytes at addresses the supervisor recorded from the healthy guest and interprets nothing of
// the crashed memory; the repair engine still checks that the crashed kernel's page tables map
// the code there, and reads and classifies only the pieces listed here. Under TCG that turns the
// repair VM's longest stage (24 MB compared, emulated) into a few page-table walks.
#pragma once

#include "engine/healthy_image.h"
#include "memory/physical_memory.h"

#include <nlohmann/json.hpp>

#include <cstdint>
#include <optional>
#include <vector>

namespace immortal::repair {

// More differing pieces than this and the engine compares everything itself.
inline constexpr std::size_t kMaxPrecheckPieces = 4096;

struct TextPrecheck {
  // Kernel virtual addresses of the pieces (a region's bytes within one 4 KiB virtual page) whose
  // bytes in guest-physical memory differ from the copy or could not be read. Sorted.
  std::vector<std::uint64_t> differing;
  nlohmann::json to_json() const;
  // Throws Error(ExitCode::bad_input) for a malformed list.
  static TextPrecheck from_json(const nlohmann::json& j);
};

// The first piece of every region, as if the precheck had found them differing: what the repair
// agent compares when it loads a copy, so that a crash's path is taken (and translated, under TCG)
// before the first crash.
TextPrecheck first_pieces(const HealthyImage& healthy);

// Digests every piece of the copy (HealthyRegion::digests) with a fresh random key: done once per
// copy, where it prechecks crashes (the supervisor, when it takes the copy from the repair
// payload), so that a crash hashes the guest's code (XXH3-128, at memory speed) instead of comparing
// it with the copy byte for byte, and the copy's own bytes are not read at all. The key stays in
// the supervisor: a guest cannot make a page that collides with a digest it cannot compute.
void digest_pieces(HealthyImage& healthy);

// With digests, a region's pieces are compared by them; a region without is compared byte for byte.
// nullopt when some region has no physical runs (a copy from an older version) or more than
// kMaxPrecheckPieces pieces differ: the engine then compares every byte itself.
std::optional<TextPrecheck> precheck_text(const HealthyImage& healthy, const PhysicalMemory& memory);

// A whole 4 KiB page of guest-physical memory the healthy copy holds: one region covers it
// entirely, within one physical run. A bundle's snapshot need not copy such a page from the
// crashed guest when the precheck found it equal: the copy's bytes are the crash's.
struct WholeCodePage {
  std::uint64_t physical = 0, virt = 0;
  const HealthyRegion* region = nullptr;  // the copy's 4096 bytes of it: region's [offset, offset + 4096)
  std::uint64_t offset = 0;
  bool zeros = false;  // all zeros in the copy
};
// Sorted by physical address, each page once (a page two regions share is none of them whole).
// Which pages are all zeros: by the digests where the regions have them, else by reading
// (unpacking) the copy; not at all without find_zeros (every `zeros` false).
std::vector<WholeCodePage> whole_code_pages(const HealthyImage& healthy, bool find_zeros = true);
// For each of pages, whether the precheck found its piece equal: its bytes are then the copy's.
std::vector<bool> unchanged_code(const std::vector<WholeCodePage>& pages, const TextPrecheck& precheck);

// The 4 KiB virtual page a kernel address is in: how pieces are named.
inline std::uint64_t piece_of(std::uint64_t address) { return address & ~0xfffull; }

}  // namespace immortal::repair
