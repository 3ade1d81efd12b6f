// The Machine backends `immortal run --backend NAME` can choose from, by name. The one place
// that knows them all: everything else holds a Machine and asks it what it can do.
#pragma once

#include "base/io.h"
#include "machine.h"
#include "machine_config.h"

#include <nlohmann/json.hpp>

#include <functional>
#include <memory>
#include <string>
#include <vector>

namespace immortal::vmm {

using MachineFactory = std::function<std::unique_ptr<Machine>(const MachineConfig&, Deadline)>;
using MachineAttacher = std::function<std::unique_ptr<Machine>(const MachineConfig&, const nlohmann::json& handle, Deadline)>;

struct MachineBackend {
  std::string name;
  std::string description;
  MachineFactory launch;         // a new VM, started paused
  MachineAttacher attach;        // a VM an earlier supervisor started (its Machine::attach_handle())
  MachineFactory launch_helper;  // the helper VMs (the repair VM) of this backend's guests
};

// Throws Error(ExitCode::usage) naming the backends there are.
const MachineBackend& machine_backend(const std::string& name);
std::vector<std::string> machine_backend_names();

}  // namespace immortal::vmm
