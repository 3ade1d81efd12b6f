// Chooses where each crash is analysed (docs/recovery.md, "Where the analysis runs"): the repair
// VM (--repair vm, default) or the sandboxed inline process (--repair inline); when that one is
// missing, booting, dead or too slow, the fallback (--repair-fallback inline|reboot) — and says
// so. Keeps the repair image in step with the guest's profile and restarts dead workers.
#pragma once

#include "engine/repair_service.h"
#include "machine.h"
#include "repair/repair_image.h"
#include "repair/repair_vm.h"

#include <nlohmann/json.hpp>

#include <chrono>
#include <functional>
#include <memory>
#include <optional>
#include <string>

namespace immortal::vmm {

struct RepairSettings {
  std::string mode = "vm";          // vm | inline
  std::string fallback = "inline";  // inline | reboot
  std::chrono::milliseconds timeout{5000};  // for one answer
  bool cross_check = false;         // also ask the other mode and compare (testing, validation)
  std::string agent;                // --repair-agent (else found next to immortal)
  std::uint64_t vm_memory = 384ull << 20;
};

// What the supervisor needs of an analysis, read once where the answer arrives.
struct CrashFacts {
  int cpu = -1;                    // the CPU it analysed
  std::string kind, summary, module;
  std::uint64_t percpu_base = 0;   // that CPU's per-CPU area, as the analysis found it
  std::uint64_t task = 0;          // the crashing task (0: none)
  int task_pid = -1;
};

struct RepairAnswer {
  bool ok = false;
  nlohmann::json analysis;          // the engine's report of the crash (bundles, events)
  CrashFacts facts;                 // …its fields the supervisor acts on
  repair::RepairPlan plan;          // parsed and typed (still to be validated)
  std::string mode;                 // who answered: vm, inline
  double engine_ms = 0, round_trip_ms = 0;
  double lock_search_ms = 0;  // the part of engine_ms the held-lock search took
  std::string error;                // !ok: why there is no answer
  std::vector<std::string> fallbacks;  // who could not answer first, and why
  nlohmann::json cross_check;       // --repair-cross-check: the other mode's verdict on the same crash
  nlohmann::json to_json() const;
};

class RepairBroker {
 public:
  using Say = std::function<void(const std::string&)>;
  using Event = std::function<void(const std::string& name, nlohmann::json fields)>;
  RepairBroker(RepairSettings settings, RepairVm::Factory factory, MachineConfig vm_config, std::string dir, Say say,
               Event event);
  ~RepairBroker();

  // A new healthy profile: rebuilds the repair image and restarts the workers with it.
  void rebuild(const std::string& profile_dir, const repair::HealthyImage& healthy, const Machine::RamFile& ram);
  // Every tick: notices workers becoming ready or failing; restarts failed ones (with back-off).
  void poll();
  RepairAnswer analyse(const repair::RepairRequest& request);
  const repair::HealthyImage* healthy() const { return healthy_ ? &*healthy_ : nullptr; }
  const std::string& mode() const { return settings_.mode; }
  nlohmann::json status();

 private:
  struct Slot {
    std::string mode;
    std::unique_ptr<RepairWorker> worker;
    std::string reported;           // the state last reported as an event
    Clock::time_point retry_at{};
    int failures = 0;
  };
  void start(Slot& slot);
  void watch(Slot& slot);
  bool answer_from(Slot& slot, const std::string& request, RepairAnswer& out, bool wait_for_start);
  Slot* other_slot(const std::string& mode);

  RepairSettings settings_;
  RepairVm::Factory factory_;
  MachineConfig vm_config_;
  std::string dir_;
  Say say_;
  Event event_;
  std::optional<RepairImage> image_;
  std::optional<repair::HealthyImage> healthy_;
  Machine::RamFile ram_;
  Slot vm_{"vm", nullptr, "", {}, 0};
  Slot inline_{"inline", nullptr, "", {}, 0};
};

}  // namespace immortal::vmm
