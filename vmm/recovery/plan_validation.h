// The supervisor's check of a repair plan before it touches the guest: whatever computed the
// plan (the in-process engine today, the repair VM of issue 7), a plan may only write a few
// bytes at places a repair has reason to touch, and change registers of the crashing vCPU.
#pragma once

#include "engine/crash_analysis.h"
#include "engine/repair_plan.h"
#include "kernel/kernel.h"

#include <string>

namespace immortal::vmm {

struct PlanLimits {
  std::size_t max_actions = 16;
  std::size_t max_writes = 32;
  std::size_t max_write_bytes = 16;
};

// Throws Error(ExitCode::failure) naming the first rule the plan breaks.
void validate_plan(const repair::RepairPlan& plan, const repair::CrashAnalysis& analysis, const Kernel& kernel,
                   const PlanLimits& limits = {});

}  // namespace immortal::vmm
