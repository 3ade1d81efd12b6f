// Resume or reboot: the supervisor's own decision on a crash, from the repair engine's answer
// (untrusted: it read a crashed guest) and what the supervisor knows independently — the
// operator's policy, the recovery budget, the stopped vCPU's registers and the module's bounds.
// A plan that breaks any rule is turned into a reboot with the rule as its reason.
#pragma once

#include "engine/crash_record.h"
#include "engine/healthy_image.h"
#include "live_kernel.h"
#include "recovery/recovery_policy.h"
#include "repair/repair_engine.h"

#include <string>

namespace immortal::vmm {

struct CrashDecision {
  repair::RepairPlan plan;  // plan.resume: repair and resume; else plan.reason says why not
  std::string summary;      // what the crash was, for people
  bool analysed = false;    // false: there is no analysis to trust (summary = the reason)
};

CrashDecision decide_on_crash(const RepairAnswer& answer, const repair::CrashRecord& record,
                              const RecoveryPolicy& policy, RecoveryBudget& budget, LiveKernel& kernel,
                              const repair::HealthyImage* healthy);

}  // namespace immortal::vmm
