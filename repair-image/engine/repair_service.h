// The repair engine as a service: one request (the crash record and what the supervisor itself
// patched) in, one answer (analysis, code integrity, kernel consistency, repair plan) out, as
// JSON. The repair agent runs it in the repair VM or in the sandboxed inline process; both
// answer the same request with the same bytes (docs/protocol.md, "Repair protocol").
#pragma once

#include "engine/crash_analysis.h"
#include "engine/crash_record.h"
#include "engine/healthy_image.h"
#include "engine/repair_plan.h"
#include "engine/text_integrity.h"
#include "engine/text_precheck.h"
#include "kernel/kernel.h"

#include <nlohmann/json.hpp>

#include <optional>
#include <vector>

namespace immortal::repair {

// The crash's memory as a snapshot in one of the host pool's arenas (docs/protocol.md): the
// bundle's copy of the stopped guest, taken before the request. The repair VM analyses it
// instead of the guest's RAM; the kernel's code pages the precheck found unchanged are read
// from the healthy copy (the snapshot leaves them for after the resume).
struct SnapshotRef {
  int arena = -1;                 // the pool's arena (the repair VM's window onto it)
  std::uint64_t pages_bytes = 0;  // from the arena's start: the page slots the index names
  std::uint64_t index_bytes = 0;  // the page index (MemorySnapshot::index), the request's attachment
};
nlohmann::json to_json(const SnapshotRef& ref);
// Throws Error(ExitCode::bad_input) naming `what` for anything but an arena 0 or 1 and byte counts.
SnapshotRef snapshot_ref_from_json(const nlohmann::json& j, const char* what);

struct RepairRequest {
  CrashRecord record;
  std::vector<KnownPatch> known_patches;  // the supervisor's quarantine patches
  bool quarantine_driver = false;         // --quarantine driver
  // The supervisor's comparison of the kernel's code where it lay (engine/text_precheck.h);
  // without it the engine compares every byte itself.
  std::optional<TextPrecheck> text_precheck;
  std::optional<SnapshotRef> snapshot;
  std::string snapshot_index;  // the snapshot's page index, sent beside the JSON (not in it)
  nlohmann::json to_json() const;
  // Throws Error(ExitCode::bad_input) for a malformed request.
  static RepairRequest from_json(const nlohmann::json& j);
};

// Limits on what a restore of corrupted code may cover: beyond them the kernel is too damaged.
inline constexpr std::uint64_t kMaxRestoreBytes = 64 * 1024;
inline constexpr std::size_t kMaxRestoreRanges = 64;

struct EngineResult {
  CrashAnalysis analysis;
  IntegrityReport integrity;
  std::vector<std::string> consistency;  // reasons the core structures are not trusted
  RepairPlan plan;
  // How long each stage took, in milliseconds, in the order they ran (they differ from run to run).
  std::vector<std::pair<std::string, double>> stage_ms;
  // {"analysis": {... "integrity", "consistency"}, "plan": {...}}: what both modes must agree on;
  // "timings": how long parts took.
  nlohmann::json to_json() const;
};

// The engine once over a sleeping process of the healthy guest, its result thrown away: in the
// repair VM, TCG translates code the first time it runs and the agent's heap grows at its first
// use, so a first crash's analysis took about twice as long as the next ones. Called when the
// agent loads a profile, never during a crash. Returns what it did, for the agent's summary.
std::string rehearse_analysis(const Kernel& kernel);

struct EngineOptions {
  // Check the kernel's code on a second thread while the crash is analysed (the repair VM has
  // two vCPUs; the inline agent's sandbox allows no new threads).
  bool parallel_integrity = false;
};
// Everything the engine does for one crash. healthy may be null (no copy: integrity unchecked).
EngineResult run_repair_engine(const Kernel& kernel, const HealthyImage* healthy, const RepairRequest& request,
                               EngineOptions options = {});

}  // namespace immortal::repair
