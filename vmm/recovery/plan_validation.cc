#include "recovery/plan_validation.h"

#include "base/error.h"
#include "kernel/modules.h"

#include <fmt/format.h>

#include <set>

namespace immortal::vmm {

namespace {

const std::set<std::string> kRegisters = {"rip", "rsp", "rax", "rbx", "rbp", "rdi", "r12", "r13", "r14", "r15", "eflags"};

}  // namespace

void validate_plan(const repair::RepairPlan& plan, const repair::CrashAnalysis& analysis, const Kernel& kernel,
                   const PlanLimits& limits) {
  if (!plan.resume) return;  // a reboot touches nothing
  if (plan.vcpu != analysis.cpu) fail(ExitCode::failure, "the plan is for vCPU {}, the crash on {}", plan.vcpu, analysis.cpu);
  if (plan.actions.size() > limits.max_actions) fail(ExitCode::failure, "the plan has {} actions", plan.actions.size());
  // Where writes may go: the faulting module (its data for locks, its text for quarantine),
  // the crashing CPU's preempt count and the kernel's taint mask.
  std::uint64_t text_begin = 0, text_end = 0, data_end = 0;
  for (const auto& m : read_modules(kernel).modules)
    if (m.name == analysis.module) {
      text_begin = m.base;
      text_end = m.base + m.text_size;
      data_end = m.base + m.size;
    }
  if (!text_begin) fail(ExitCode::failure, "the plan's module {} is not loaded", analysis.module);
  std::uint64_t preempt = analysis.percpu_base + kernel.symbols().percpu_offset("__preempt_count").value_or(0);
  std::uint64_t taint = kernel.symbol("tainted_mask");
  // …and the return address of an end-callback, just below the stack pointer it resumes with.
  std::uint64_t resume_rsp = 0;
  for (const auto& a : plan.actions)
    for (const auto& r : a.registers)
      if (r.name == "rsp") resume_rsp = r.to;
  std::size_t writes = 0;
  for (const auto& a : plan.actions) {
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
