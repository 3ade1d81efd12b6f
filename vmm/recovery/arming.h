// Keeps crash interception in step with the guest's profile: for each new profile (at boot,
// after a module load or a reboot) the breakpoints are armed from its symbols, the repair image
// is rebuilt from it and the bundle arena sized for it — once per profile, whatever happens.
#pragma once

#include "live_kernel.h"
#include "machine.h"
#include "profile_source.h"
#include "recovery/crash_bundles.h"
#include "recovery/crash_interceptor.h"
#include "recovery/quarantine.h"
#include "repair/repair_engine.h"

#include <functional>
#include <string>

namespace immortal::vmm {

class Arming {
 public:
  using Say = std::function<void(const std::string&)>;
  using Event = std::function<void(const std::string& name, nlohmann::json fields)>;
  Arming(Machine& machine, CrashInterceptor& interceptor, LiveKernel& kernel, const ProfileSource& profiles,
         RepairEngine* repair, CrashBundles& bundles, const QuarantineList& quarantine, Event event, Say say,
         Say report_ready);

  // Called while the guest runs (boot_id: its agent's): acts on a profile not seen yet, once
  // one of this boot has come (a profile of the boot before has other KASLR offsets).
  void follow(bool recovery_enabled, const std::string& boot_id);
  // A new boot: what was armed belongs to the old one.
  void forget() { armed_profile_ = 0; }

 private:
  void arm();
  void rebuild_repair_image(const std::string& taken_at);

  Machine& machine_;
  CrashInterceptor& interceptor_;
  LiveKernel& kernel_;
  const ProfileSource& profiles_;
  RepairEngine* repair_;
  CrashBundles& bundles_;
  const QuarantineList& quarantine_;
  Event event_;
  Say say_, report_ready_;
  std::uint64_t armed_profile_ = 0;  // the number of the profile the breakpoints come from
};

}  // namespace immortal::vmm
