// Kernel code integrity: the crashed kernel's text and read-only data compared with the healthy
// copy (engine/healthy_image.h). Differences where the kernel patches its own code at run time
// (static keys, static calls, ftrace sites, int3 of a probe) and the supervisor's own quarantine
// patches are expected; any other difference is corruption, reported to the byte.
#pragma once

#include "engine/healthy_image.h"
#include "engine/text_precheck.h"
#include "kernel/kernel.h"

#include <nlohmann/json.hpp>

#include <cstdint>
#include <string>
#include <vector>

namespace immortal::repair {

// A patch the supervisor itself made (a quarantined function): expected where it is.
struct KnownPatch {
  std::uint64_t address = 0;
  std::vector<std::uint8_t> bytes;
};

struct TextDifference {
  std::uint64_t address = 0;
  std::string region;              // "kernel text", "immortal_fault text" …
  std::string where;               // symbol+offset
  // corrupted, patch-site (the kernel's own run-time patching), breakpoint (int3), quarantine
  std::string cause;
  std::vector<std::uint8_t> healthy, now;
};

struct IntegrityReport {
  std::uint64_t checked_bytes = 0;
  std::size_t regions_checked = 0;
  std::vector<TextDifference> corrupted;     // what the kernel did not do itself
  std::size_t expected_differences = 0;      // patch sites, breakpoints, quarantine patches
  std::vector<TextDifference> expected_sample;  // the first few of them, for the report
  std::vector<std::string> problems;         // regions that could not be compared, and why
  bool truncated = false;                    // more differences than are listed

  std::uint64_t corrupted_bytes() const;
  // The corrupted range holding address (an instruction may start up to 15 bytes before it).
  const TextDifference* corruption_at(std::uint64_t address) const;
  nlohmann::json to_json() const;
};

// With precheck (the supervisor's comparison where the code lay, engine/text_precheck.h), a
// region that has its physical runs is read only where the precheck found differences or where
// the crashed kernel's page tables no longer map it where it lay; the rest is known equal. The
// report is the same as without it.
IntegrityReport check_text_integrity(const Kernel& kernel, const HealthyImage& healthy,
                                     const std::vector<KnownPatch>& known_patches,
                                     const TextPrecheck* precheck = nullptr);

}  // namespace immortal::repair
