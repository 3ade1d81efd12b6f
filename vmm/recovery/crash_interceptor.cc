#include "recovery/crash_interceptor.h"

#include "base/error.h"
#include "recovery/event_log.h"

#include <fmt/format.h>

namespace immortal::vmm {

namespace {

// panic() is where every fatal path of Linux 6.1 meets (kernel/panic.c): oops_end() with
// panic_on_oops, check_panic_on_warn(), the soft-lockup watchdog, khungtaskd, and drivers
// calling it directly. Its first instruction runs before it disables anything, stops the other
// CPUs or calls the panic notifiers (pvpanic), so the guest can still be resumed from there.
// One point also fits the four debug registers KVM offers.
constexpr const char* kInterceptionPoints[] = {"panic"};

}  // namespace

std::vector<std::string> CrashInterceptor::arm(const Kernel& kernel) {
  disarm();
  std::vector<std::string> notes;
  for (const char* name : kInterceptionPoints) {
    std::uint64_t address = kernel.symbol(name);
    machine_.insert_breakpoint(address);
    points_[address] = name;
  }
  // An oops reaches panic() only with panic_on_oops; without it Linux kills the task itself and
  // leaves the driver's locks held (DESIGN.md). With recovery on, every oops is ours to handle.
  std::uint64_t knob = kernel.symbol("panic_on_oops");
  auto value = kernel.memory().read_value<std::int32_t>(knob);
  if (value == 0) {
    const std::uint8_t one[4] = {1, 0, 0, 0};
    machine_.write_virtual(0, knob, one);
    notes.push_back("panic_on_oops was 0: set to 1 so that every oops reaches the interception point");
  }
  return notes;
}

void CrashInterceptor::disarm() {
  for (const auto& [address, name] : points_) {
    try {
      machine_.remove_breakpoint(address);
    } catch (const Error&) {
      // Gone with a reset or never set: nothing left to remove.
    }
  }
  points_.clear();
}

std::vector<std::string> CrashInterceptor::points() const {
  std::vector<std::string> out;
  for (const auto& [address, name] : points_) out.push_back(fmt::format("{} ({:#x})", name, address));
  return out;
}

std::optional<std::string> CrashInterceptor::point_at(std::uint64_t address) const {
  auto it = points_.find(address);
  if (it == points_.end()) return std::nullopt;
  return it->second;
}

repair::CrashRecord CrashInterceptor::record(std::uint64_t id, int vcpu, const std::string& caught_by,
                                             const std::string& at) {
  repair::CrashRecord r;
  r.id = id;
  r.time = utc_now();
  r.caught_by = caught_by;
  r.intercepted_at = at;
  r.vcpu = vcpu;
  for (int v = 0; v < machine_.vcpu_count(); ++v) r.registers.push_back(machine_.read_registers(v));
  return r;
}

void CrashInterceptor::apply(const repair::RepairPlan& plan, const Kernel& kernel) {
  X86Registers regs = machine_.read_registers(plan.vcpu);
  bool registers_changed = false;
  for (const auto& action : plan.actions) {
    for (const auto& w : action.writes) {
      std::vector<std::uint8_t> now(w.expected.size());
      kernel.memory().read(w.address, std::as_writable_bytes(std::span(now)));
      if (now != w.expected)
        fail(ExitCode::failure, "{}: the guest's bytes at {:#x} changed since the analysis", action.kind, w.address);
      machine_.write_virtual(plan.vcpu, w.address, w.bytes);
    }
    for (const auto& r : action.registers) {
      std::uint64_t* field = regs.field(r.name);
      if (!field) fail(ExitCode::failure, "{}: no register {}", action.kind, r.name);
      *field = r.to;
      registers_changed = true;
    }
  }
  if (registers_changed) machine_.write_registers(plan.vcpu, regs);
}

}  // namespace immortal::vmm
