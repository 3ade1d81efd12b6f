// Catching a crash at its first instruction and acting on a repair plan, through the Machine
// seam only: breakpoints at the crash paths' entry (from the healthy-guest profile, so KASLR
// is accounted for), the crash record (every vCPU's registers), and the plan's writes and
// register changes applied to the stopped guest.
#pragma once

#include "engine/crash_record.h"
#include "engine/repair_plan.h"
#include "kernel/kernel.h"
#include "machine.h"

#include <chrono>
#include <map>
#include <optional>
#include <string>
#include <vector>

namespace immortal::vmm {

class CrashInterceptor {
 public:
  explicit CrashInterceptor(Machine& machine) : machine_(machine) {}

  // Arms the breakpoints for this kernel; the machine must be paused. Returns what was done,
  // for the event log (e.g. "panic_on_oops was 0: set to 1").
  std::vector<std::string> arm(const Kernel& kernel);
  // Makes vCPU (stopped at an interception point's first instruction) return from that function
  // at once, as if it had done nothing: how crash_kexec() is stepped over (machine paused).
  void return_from_call(int vcpu, const Kernel& kernel);
  // Removes them (machine paused). Safe to call when nothing is armed.
  void disarm();
  bool armed() const { return !points_.empty(); }
  std::vector<std::string> points() const;
  // Address → symbol of each breakpoint set; adopt() takes over those an earlier supervisor set
  // in this VM (so a crash stopped at one is recognised, and disarm() removes them).
  const std::map<std::uint64_t, std::string>& armed_points() const { return points_; }
  void adopt(std::map<std::uint64_t, std::string> points) { points_ = std::move(points); }
  // The crash path entry at this address, if it is one of ours.
  std::optional<std::string> point_at(std::uint64_t address) const;

  // Every vCPU's registers while the machine is stopped.
  repair::CrashRecord record(std::uint64_t id, int vcpu, const std::string& caught_by, const std::string& at);
  // Applies a (validated) plan: each write only if the guest still holds the expected bytes;
  // each guest call run on the crashing vCPU until it returns to the interception point (the
  // guest runs meanwhile, bounded by call_timeout). Throws Error when it cannot; nothing after
  // the failing step is applied. The machine is paused when it returns or throws.
  void apply(const repair::RepairPlan& plan, const Kernel& kernel,
             std::chrono::milliseconds call_timeout = std::chrono::seconds(2));

 private:
  // Runs function(args) on vcpu from the stopped state `at` (rip at an interception point) and
  // waits until it returns there.
  void call(int vcpu, const X86Registers& at, const repair::GuestCall& call, std::chrono::milliseconds timeout);

  Machine& machine_;
  std::map<std::uint64_t, std::string> points_;  // address → symbol
};

}  // namespace immortal::vmm
