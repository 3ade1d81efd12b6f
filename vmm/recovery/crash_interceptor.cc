#include "recovery/crash_interceptor.h"

#include "base/error.h"
#include "recovery/event_log.h"

#include <fmt/format.h>

#include <poll.h>

#include <cstring>

namespace immortal::vmm {

namespace {

constexpr std::uint64_t kStackMask = 16 * 1024 - 1;  // THREAD_SIZE, x86-64
constexpr std::uint64_t kCallStackRoom = 2048;       // below the call's frame, for the unlock's own

// panic() is where every fatal path of Linux 6.1 meets (kernel/panic.c): oops_end() with
// panic_on_oops, check_panic_on_warn(), the soft-lockup watchdog, khungtaskd, and drivers
// calling it directly. Its first instruction runs before it disables anything, stops the other
// CPUs or calls the panic notifiers (pvpanic), so the guest can still be resumed from there.
// With a crash kernel loaded (kdump), oops_end() calls crash_kexec() before panic() and the
// guest would jump into its kdump kernel: crash_kexec is caught too, and stepped over so that
// the oops reaches panic(). Two points of the four debug registers KVM offers.
constexpr const char* kInterceptionPoints[] = {"panic", "crash_kexec"};

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

void CrashInterceptor::return_from_call(int vcpu, const Kernel& kernel) {
  X86Registers r = machine_.read_registers(vcpu);
  if (!point_at(r.rip)) fail(ExitCode::failure, "vCPU {} is not at an interception point", vcpu);
  // At a function's first instruction the return address is at the stack pointer.
  r.rip = kernel.memory().read_u64(r.rsp);
  r.rsp += 8;
  machine_.write_registers(vcpu, r);
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

void CrashInterceptor::call(int vcpu, const X86Registers& at, const repair::GuestCall& c,
                            std::chrono::milliseconds timeout) {
  if (!point_at(at.rip)) fail(ExitCode::failure, "a guest call must start at an interception point");
  // A frame below the interrupted one, on the same stack: the return address is the
  // interception point, so the return stops there; rsp stays 8 mod 16 as at any function entry.
  std::uint64_t sp = at.rsp - 16;
  if ((sp & ~kStackMask) != (at.rsp & ~kStackMask) || (sp & kStackMask) < kCallStackRoom)
    fail(ExitCode::failure, "no room on the crashing stack for a call of {}", c.function);
  std::uint8_t ret[8];
  std::memcpy(ret, &at.rip, 8);
  machine_.write_virtual(vcpu, sp, ret);
  X86Registers r = at;
  r.rip = c.address;
  r.rsp = sp;
  std::uint64_t* arg[] = {&r.rdi, &r.rsi, &r.rdx};
  for (std::size_t i = 0; i < c.args.size() && i < 3; ++i) *arg[i] = c.args[i];
  machine_.write_registers(vcpu, r);
  machine_.resume();
  auto deadline = Deadline::in(timeout);
  for (;;) {
    std::vector<pollfd> fds;
    for (int fd : machine_.event_fds()) fds.push_back({fd, POLLIN, 0});
    ::poll(fds.data(), fds.size(), std::max(1, deadline.poll_timeout_ms()));
    for (const auto& e : machine_.drain_events()) {
      using Kind = MachineEvent::Kind;
      if (e.kind == Kind::breakpoint) {
        X86Registers now = machine_.read_registers(e.vcpu >= 0 ? e.vcpu : vcpu);
        if (e.vcpu == vcpu && now.rip == at.rip && now.rsp == sp + 8) return;  // it returned
        fail(ExitCode::failure, "while {} ran, vCPU {} stopped at {:#x}: another crash", c.function, e.vcpu, now.rip);
      }
      if (e.kind == Kind::guest_panicked || e.kind == Kind::reset || e.kind == Kind::shutdown) {
        if (machine_.state() == RunState::running) machine_.pause();
        fail(ExitCode::failure, "while {} ran, the guest {}", c.function, to_string(e.kind));
      }
    }
    if (deadline.expired()) {
      machine_.pause();
      fail(ExitCode::failure, "{} did not return within {} ms", c.function, timeout.count());
    }
  }
}

void CrashInterceptor::apply(const repair::RepairPlan& plan, const Kernel& kernel, std::chrono::milliseconds call_timeout) {
  const X86Registers stopped = machine_.read_registers(plan.vcpu);
  X86Registers regs = stopped;
  bool registers_changed = false;
  for (const auto& action : plan.actions) {
    for (const auto& w : action.writes) {
      std::vector<std::uint8_t> now(w.expected.size());
      kernel.memory().read(w.address, std::as_writable_bytes(std::span(now)));
      if (now != w.expected)
        fail(ExitCode::failure, "{}: the guest's bytes at {:#x} changed since the analysis", action.kind, w.address);
      machine_.write_virtual(plan.vcpu, w.address, w.bytes);
    }
    for (const auto& c : action.calls) {
      call(plan.vcpu, stopped, c, call_timeout);
      kernel.memory().forget_translations();  // the guest ran
      registers_changed = true;  // the vCPU is back at the interception point: set it as planned
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
