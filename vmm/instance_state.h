// What must outlive a supervisor, kept in the instance directory as state.json so that a new
// supervisor (after a restart, a SIGKILL or an upgrade) can take the running VM over: the
// settings it was started with, the backend and how to reach its VM, the boot it watched, the
// interception points set in the VM, and the crash ledger. Quarantine records (quarantine.json),
// the event log (events.jsonl) and the profile (profile/) sit beside it. Written atomically (a
// new file renamed over the old); the format has a version, and a file from a newer immortal is
// refused rather than misread (docs/formats.md, "Instance state").
#pragma once

#include "machine_config.h"
#include "recovery/crash_ledger.h"

#include <nlohmann/json.hpp>

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace immortal::vmm {

struct InstanceState {
  static constexpr int kVersion = 1;
  nlohmann::json settings;   // the `run` options, as the CLI reads them back
  std::string backend;       // "qemu"
  MachineConfig machine;
  nlohmann::json vm;         // the backend's attach handle
  int supervisor_pid = 0;    // who wrote it last
  std::string boot_id;       // the guest boot it watched
  struct Point {
    std::uint64_t address = 0;
    std::string symbol;
  };
  std::vector<Point> armed;  // breakpoints set in the VM
  std::uint64_t crashes = 0, recoveries = 0, reboots = 0;
  std::optional<CrashEntry> last_crash;

  nlohmann::json to_json() const;
  // Throws Error(ExitCode::bad_input) naming what is wrong (a damaged file, a newer format).
  static InstanceState from_json(const nlohmann::json& j);
  // tmp + fsync + rename: a reader sees the old file or the new one, never half of one.
  void save(const std::string& path) const;
  // nullopt when there is no such file.
  static std::optional<InstanceState> load(const std::string& path);
};

// The state of an instance whose VM outlived its supervisor (a restart, a SIGKILL): there is no
// supervisor, and the VM process its state names is alive. nullopt when there is none to attach
// to (a libvirt domain's state names no process: libvirt's own events say when it runs).
std::optional<InstanceState> orphaned_instance(const std::string& runtime_root, const std::string& name);

nlohmann::json machine_config_json(const MachineConfig& c);
MachineConfig machine_config_from_json(const nlohmann::json& j);

}  // namespace immortal::vmm
