// The parts of a supervised instance that the recovery room works with, owned by the
// supervisor and handed over by reference: the coordinator and the reboot path share them.
#pragma once

#include "agent_channel.h"
#include "guest_state.h"
#include "live_kernel.h"
#include "machine.h"
#include "profile_source.h"
#include "recovery/crash_bundles.h"
#include "recovery/crash_ledger.h"
#include "recovery/quarantine.h"
#include "recovery/recovery_policy.h"
#include "repair/repair_engine.h"

#include <functional>
#include <string>

namespace immortal::vmm {

// What recovery reads and changes.
struct RecoveryParts {
  const RecoveryPolicy& policy;
  Machine& machine;
  AgentChannel& agent;
  GuestStatus& state;
  LiveKernel& kernel;
  const ProfileSource& profiles;
  CrashLedger& ledger;
  CrashBundles& bundles;
  QuarantineList& quarantine;
  RepairEngine* repair;          // nullptr with recovery off
  std::string crash_dir;         // crash-N.json records
  std::function<void(const std::string& name, nlohmann::json fields)> event;
  std::function<void(const std::string&)> say;
  std::function<std::string(std::size_t lines)> console_tail;
  std::function<void(const std::string&)> report_ready;
  // The guest can neither be resumed nor rebooted: the instance ends with this reason.
  std::function<void(const std::string& reason)> give_up;
};

}  // namespace immortal::vmm
