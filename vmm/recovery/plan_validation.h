// The supervisor's own check of a repair plan before anything is written: the plan comes from
// the repair agent, which parsed a crashed and possibly hostile guest's memory, so it is
// untrusted. Only what the rules below allow may be applied (docs/recovery.md, "Plan validation").
#pragma once

#include "engine/healthy_image.h"
#include "engine/repair_plan.h"
#include "kernel/kernel.h"

#include <cstdint>
#include <optional>
#include <string>

namespace immortal::vmm {

struct PlanLimits {
  std::size_t max_actions = 16;
  std::size_t max_writes = 32;
  std::size_t max_write_bytes = 16;
  std::size_t max_calls = 16;      // guest calls (the unlocks of sleeping locks with waiters)
};

// What the supervisor knows of the crash independently of the plan.
struct PlanContext {
  int cpu = -1;                    // the vCPU it stopped
  std::string module;              // the module the analysis blames
  std::uint64_t percpu_base = 0;   // that CPU's per-CPU area
  // Where that module lies: from the healthy copy, or — for a module loaded since — from the
  // guest's module list (a bounded, cycle-safe walk).
  std::optional<repair::ModuleLayout> module_layout;
};

// Throws Error(ExitCode::failure) naming the first rule the plan breaks. The kernel gives the
// profile's symbols and types, and the stopped guest's memory where a lock release is checked
// (its owner must be the task on the crashing CPU); module bounds and code come from the
// healthy copy.
void validate_plan(const repair::RepairPlan& plan, const PlanContext& crash, const Kernel& kernel,
                   const repair::HealthyImage* healthy, const PlanLimits& limits = {});

}  // namespace immortal::vmm
