#include "recovery/plan_validation.h"

#include "base/error.h"
#include "engine/repair_service.h"

#include <fmt/format.h>

#include <algorithm>
#include <set>

namespace immortal::vmm {

namespace {

const std::set<std::string> kRegisters = {"rip", "rsp", "rax", "rbx", "rbp", "rdi", "r12", "r13", "r14", "r15", "eflags"};

// A restore may only put back the healthy copy's own bytes, inside the kernel's code.
void validate_restore(const repair::RepairAction& a, const repair::HealthyImage* healthy) {
  if (!healthy) fail(ExitCode::failure, "restore-code without a healthy copy to check it against");
  if (a.writes.size() > repair::kMaxRestoreRanges || !a.registers.empty())
    fail(ExitCode::failure, "restore-code: {} writes", a.writes.size());
  std::uint64_t total = 0;
  for (const auto& w : a.writes) {
    total += w.bytes.size();
    if (!w.code || w.bytes.empty() || w.bytes.size() != w.expected.size() || total > repair::kMaxRestoreBytes)
      fail(ExitCode::failure, "restore-code: a write of {} bytes at {:#x}", w.bytes.size(), w.address);
    const repair::HealthyRegion* r = healthy->find(w.address, w.bytes.size());
    if (!r) fail(ExitCode::failure, "restore-code: {:#x} is not in the kernel's code", w.address);
    if (!std::equal(w.bytes.begin(), w.bytes.end(), r->bytes.begin() + static_cast<std::ptrdiff_t>(w.address - r->address)))
      fail(ExitCode::failure, "restore-code: the bytes for {:#x} are not the healthy copy's", w.address);
  }
}

}  // namespace

void validate_plan(const repair::RepairPlan& plan, const PlanContext& crash, const Kernel& kernel,
                   const repair::HealthyImage* healthy, const PlanLimits& limits) {
  if (!plan.resume) return;  // a reboot touches nothing
  if (plan.vcpu != crash.cpu) fail(ExitCode::failure, "the plan is for vCPU {}, the crash on {}", plan.vcpu, crash.cpu);
  if (plan.actions.size() > limits.max_actions) fail(ExitCode::failure, "the plan has {} actions", plan.actions.size());
  if (!healthy) fail(ExitCode::failure, "no healthy copy of the guest's code to check the plan against");
  // Where writes may go: the faulting module (its data for locks, its text for quarantine),
  // the crashing CPU's preempt count and the kernel's taint mask — module bounds as the healthy
  // guest had them, not as the crashed memory says.
  const repair::ModuleLayout* m = crash.module_layout ? &*crash.module_layout : nullptr;
  if (!m) fail(ExitCode::failure, "the plan's module {} is not loaded", crash.module);
  std::uint64_t text_begin = m->base, text_end = m->base + m->text_size, data_end = m->base + m->size;
  std::uint64_t preempt = crash.percpu_base + kernel.symbols().percpu_offset("__preempt_count").value_or(0);
  std::uint64_t taint = kernel.symbol("tainted_mask");
  // …and the return address of an end-callback, just below the stack pointer it resumes with.
  std::uint64_t resume_rsp = 0;
  for (const auto& a : plan.actions)
    for (const auto& r : a.registers)
      if (r.name == "rsp") resume_rsp = r.to;
  std::size_t writes = 0;
  for (const auto& a : plan.actions) {
    if (a.kind == "restore-code") {
      validate_restore(a, healthy);
      continue;
    }
    for (const auto& w : a.writes) {
      if (++writes > limits.max_writes) fail(ExitCode::failure, "the plan writes too often");
      if (w.bytes.empty() || w.bytes.size() > limits.max_write_bytes || w.bytes.size() != w.expected.size())
        fail(ExitCode::failure, "{}: a write of {} bytes (expecting {})", a.kind, w.bytes.size(), w.expected.size());
      std::uint64_t end = w.address + w.bytes.size();
      bool ok = w.code ? (w.address >= text_begin && end <= text_end)
                       : ((w.address >= text_end && end <= data_end) || (w.address == preempt && w.bytes.size() == 4) ||
                          (w.address == taint && w.bytes.size() == 8) ||
                          (a.kind == "end-callback" && resume_rsp && w.address == resume_rsp && w.bytes.size() == 8));
      if (!ok) fail(ExitCode::failure, "{}: a write at {:#x} is outside what a repair may touch", a.kind, w.address);
    }
    for (const auto& r : a.registers)
      if (!kRegisters.count(r.name)) fail(ExitCode::failure, "{}: the plan changes register {}", a.kind, r.name);
  }
}

}  // namespace immortal::vmm
