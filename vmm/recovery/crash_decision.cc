#include "recovery/crash_decision.h"

#include "base/error.h"
#include "recovery/plan_validation.h"

#include <fmt/format.h>

namespace immortal::vmm {

namespace {

// The supervisor's own checks of a plan that would resume: throws Error naming the first that fails.
void check_plan(const repair::RepairPlan& plan, const CrashFacts& facts, const repair::CrashRecord& record,
                LiveKernel& live, const repair::HealthyImage* healthy) {
  if (facts.cpu != record.vcpu) fail(ExitCode::failure, "the analysis is of CPU {}, the crash on {}", facts.cpu, record.vcpu);
  // The per-CPU area a plan may write into is the one this vCPU's GS points at (kernel mode: GS
  // base; user mode: the swapped-out kernel GS base), not what the analysis says.
  const X86Registers& regs = record.registers.at(static_cast<std::size_t>(record.vcpu));
  if (facts.percpu_base != regs.gs_base && facts.percpu_base != regs.kernel_gs_base)
    fail(ExitCode::failure, "the analysis puts CPU {}'s per-CPU area at {:#x}, its GS base says otherwise", record.vcpu,
         facts.percpu_base);
  PlanContext context{facts.cpu, facts.module, facts.percpu_base, std::nullopt};
  // The module's bounds as the healthy copy has them, unless it was loaded (or reloaded
  // elsewhere) since: then as the analysis read them from the module list, inside the module
  // area (the supervisor walks no list of the crashed guest; the plan's writes are still
  // checked byte for byte against what is there now).
  Kernel& kernel = live.get();
  const std::optional<repair::ModuleLayout>& now = facts.module_layout;
  const repair::ModuleLayout* known = healthy ? healthy->module(context.module) : nullptr;
  context.module_layout = known && (!now || now->base == known->base) ? std::optional(*known) : now;
  validate_plan(plan, context, kernel, healthy);
}

}  // namespace

CrashDecision decide_on_crash(const RepairAnswer& answer, const repair::CrashRecord& record,
                              const RecoveryPolicy& policy, RecoveryBudget& budget, LiveKernel& kernel,
                              const repair::HealthyImage* healthy) {
  CrashDecision d;
  if (!answer.ok) {
    d.plan.vcpu = record.vcpu;
    d.plan.reason = "the crashed kernel cannot be analysed: " + answer.error;
    d.summary = d.plan.reason;
    return d;
  }
  d.analysed = true;
  d.plan = answer.plan;
  d.summary = answer.facts.summary;
  auto& plan = d.plan;
  if (plan.resume && policy.disabled_kinds.count(answer.facts.kind)) {
    plan.resume = false;
    plan.reason = "recovery of " + answer.facts.kind + " crashes is disabled by policy";
  }
  if (plan.resume && !budget.available(Clock::now())) {
    plan.resume = false;
    plan.reason = fmt::format("the recovery limit is reached ({} in {} s): a driver that keeps crashing is "
                              "better served by a reboot", policy.max_recoveries, policy.window.count());
  }
  if (plan.resume) {
    try {
      check_plan(plan, answer.facts, record, kernel, healthy);
    } catch (const std::exception& e) {
      plan.resume = false;
      plan.reason = std::string("the plan failed validation: ") + e.what();
    }
  }
  if (d.summary.empty()) d.summary = plan.reason;
  return d;
}

}  // namespace immortal::vmm
