// `immortal status` (docs/protocol.md, "status"): the instance as one JSON object, read from
// every room without changing any.
#pragma once

#include "accelerator.h"
#include "agent_channel.h"
#include "base/clock.h"
#include "guest_state.h"
#include "machine.h"
#include "machine_config.h"
#include "profile_collector.h"
#include "recovery/crash_bundles.h"
#include "recovery/crash_ledger.h"
#include "recovery/recovery_coordinator.h"
#include "repair/repair_broker.h"

#include <nlohmann/json.hpp>

#include <chrono>
#include <optional>
#include <string>

namespace immortal::vmm {

struct StatusSources {
  const MachineConfig& machine;
  const AcceleratorChoice& accelerator;
  bool recovery_enabled = false;
  std::string runtime_dir, event_log;
  GuestState state = GuestState::starting;
  const Machine* vm = nullptr;    // none before the VM is up
  Clock::time_point started{};
  std::optional<std::chrono::milliseconds> boot_time;
  const AgentChannel* agent = nullptr;
  const ProfileCollector* profiles = nullptr;
  const RecoveryCoordinator* recovery = nullptr;
  const CrashLedger& ledger;
  RepairBroker* repair = nullptr;
  const CrashBundles* bundles = nullptr;
};

nlohmann::json instance_status(const StatusSources& from);

}  // namespace immortal::vmm
