// Where a crash is analysed and its repair planned, as the recovery room sees it: an engine
// that answers a crash record with an analysis and a typed (not yet validated) plan, and keeps
// the healthy copy of the guest's code the plan is checked against. RepairBroker is the real one
// (the repair VM, the inline process, the fallback); tests script their own.
#pragma once

#include "engine/healthy_image.h"
#include "engine/repair_plan.h"
#include "engine/repair_service.h"
#include "machine.h"

#include <nlohmann/json.hpp>

#include <map>
#include <optional>
#include <string>
#include <vector>

namespace immortal::vmm {

struct CrashFacts {
  int cpu = -1;                    // the CPU it analysed
  std::string kind, summary, module;
  std::uint64_t percpu_base = 0;   // that CPU's per-CPU area, as the analysis found it
  std::uint64_t task = 0;          // the crashing task (0: none)
  int task_pid = -1;
  // The blamed module's layout as the analysis read it from the module list (for a module the
  // healthy copy does not know, or knows at another address); only a plausible one is kept.
  std::optional<repair::ModuleLayout> module_layout;
};

// The analysis's module_layout for the module it blames, if it lies in the kernel's module area
// and does not wrap; nullopt otherwise (then the healthy copy's layout, or none, bounds writes).
std::optional<repair::ModuleLayout> plausible_module_layout(const nlohmann::json& analysis);
struct RepairAnswer {
  bool ok = false;
  nlohmann::json analysis;          // the engine's report of the crash (bundles, events)
  CrashFacts facts;                 // …its fields the supervisor acts on
  repair::RepairPlan plan;          // parsed and typed (still to be validated)
  std::string mode;                 // who answered: vm, inline
  double engine_ms = 0, round_trip_ms = 0;
  double lock_search_ms = 0;  // the part of engine_ms the held-lock search took
  double precheck_ms = 0;     // the supervisor's comparison of the kernel's code, before the request
  // The engine's stages (module_symbols, analysis, consistency, integrity, plan): where
  // engine_ms went. Only those names are taken from the agent's answer.
  std::map<std::string, double> stage_ms;
  // Which process in the repair VM analysed it (its pid there; 0 when not said) and whether it
  // was a fresh one for this crash (agent/repair_agent.cc): as the agent says, untrusted.
  std::int64_t process_pid = 0;
  bool per_crash_process = false;
  double process_fork_ms = 0;  // how long forking it took (ahead of the crash)
  std::uint64_t process_page_faults = 0;  // the page faults it took while it answered
  // What the engine read the crash from, as it says: "guest RAM" or "snapshot" (the bundle's copy
  // in the host pool's arena: which one, its page slots, the code pages read from the healthy
  // copy instead, how many reads went there and what they cost (unpacking its frames), how long
  // mapping it took); empty when it did not say.
  std::string memory_read;
  int snapshot_arena = -1;
  std::uint64_t snapshot_pages = 0, snapshot_code_pages = 0, snapshot_code_reads = 0;
  double snapshot_map_ms = 0, snapshot_code_read_ms = 0;
  std::string error;                // !ok: why there is no answer
  std::vector<std::string> fallbacks;  // who could not answer first, and why
  nlohmann::json cross_check;       // --repair-cross-check: the other mode's verdict on the same crash
  nlohmann::json to_json() const;
};

// Reads an agent's answer (untrusted text) into out: ok, error, plan, facts, analysis, timings,
// process. True when it is an answer — the engine's plan, or the engine's own "no" (!out.ok, with
// its error) — false when it is not one (why, prefixed by mode, pushed onto out.fallbacks).
bool read_repair_answer(const std::string& text, const std::string& mode, RepairAnswer& out);

class RepairEngine {
 public:
  virtual ~RepairEngine() = default;
  virtual RepairAnswer analyse(const repair::RepairRequest& request) = 0;
  // The healthy copy the current repair image was built with (nullptr before the first).
  virtual const repair::HealthyImage* healthy() const = 0;
  // A new healthy profile: the repair image is rebuilt from it and the saved profile files.
  virtual void rebuild(const std::string& profile_dir, const repair::HealthyImage& healthy, const Machine::RamFile& ram) = 0;
  virtual const std::string& mode() const = 0;  // vm | inline
  // Whether the engine that answers the next crash reads it from a snapshot in the host pool's
  // arenas (RepairRequest::snapshot), which must then be taken before the request.
  virtual bool reads_snapshots() { return false; }
};

}  // namespace immortal::vmm
