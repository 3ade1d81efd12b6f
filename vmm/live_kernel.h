// The running guest's kernel, seen through its newest healthy profile: the one view that
// arming, recovery, verification, bundles and `introspect` all read the live guest through.
// Rebuilt when a new profile arrives (a module loaded) or a new boot begins; translations are
// forgotten on every use, since the guest ran in between.
#pragma once

#include "kernel/kernel.h"
#include "machine.h"
#include "profile/guest_profile.h"
#include "profile_source.h"

#include <functional>

#include <memory>

namespace immortal::vmm {

class LiveKernel {
 public:
  // How a profile and guest memory become a kernel view (Kernel::open; tests assemble one).
  using Opener = std::function<std::unique_ptr<Kernel>(const PhysicalMemory&, const GuestProfile&)>;
  LiveKernel(Machine& machine, const ProfileSource& profiles, Opener open = {});

  // Throws Error when there is no profile yet or it does not fit the guest's memory.
  Kernel& get();
  // The view get() would return, only if it is built already (never builds one: for a guest's
  // pause); nullptr otherwise.
  Kernel* built();
  // The profile get() is built from (nullptr before the first get()).
  std::shared_ptr<const PackedProfile> profile() const { return profile_; }
  // A new boot: other KASLR offsets, nothing of the old view holds.
  void forget();

 private:
  Machine& machine_;
  const ProfileSource& profiles_;
  Opener open_;
  std::unique_ptr<Kernel> kernel_;
  std::shared_ptr<const PackedProfile> profile_;
  std::uint64_t number_ = 0;  // the profile kernel_ was built from
};

// Keeps the guest paused for a scope if it was running: reads of lists that change under a
// running guest (tasks, modules, the log) and code patches happen inside one. Resumes on the
// way out, also when the scope throws.
class PauseGuard {
 public:
  explicit PauseGuard(Machine& machine);
  ~PauseGuard();
  PauseGuard(const PauseGuard&) = delete;
  PauseGuard& operator=(const PauseGuard&) = delete;
  // Resumes now, reporting a failure to resume (the destructor can only swallow it).
  void release();

 private:
  Machine& machine_;
  bool resume_ = false;
};

template <typename F>
auto while_paused(Machine& machine, F&& f) -> decltype(f()) {
  PauseGuard guard(machine);
  if constexpr (std::is_void_v<decltype(f())>) {
    f();
    guard.release();
  } else {
    auto result = f();
    guard.release();
    return result;
  }
}

}  // namespace immortal::vmm
