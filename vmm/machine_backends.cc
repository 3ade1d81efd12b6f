#include "machine_backends.h"

#include "base/error.h"
#include "libvirt/libvirt_machine.h"
#include "qemu/qemu_machine.h"

#include <fmt/format.h>
#include <fmt/ranges.h>

namespace immortal::vmm {

namespace {
const std::vector<MachineBackend>& backends() {
  MachineFactory qemu_launch = [](const MachineConfig& c, Deadline d) {
    return std::unique_ptr<Machine>(qemu::QemuMachine::launch(c, d));
  };
  static const std::vector<MachineBackend> all = {
      {"qemu", "QEMU (KVM or TCG): QMP for lifecycle, the gdbstub for vCPUs, guest RAM in a shared memfd", qemu_launch,
       [](const MachineConfig& c, const nlohmann::json& handle, Deadline d) {
         return std::unique_ptr<Machine>(qemu::QemuMachine::attach(c, handle, d));
       },
       qemu_launch},
      // libvirt starts its domains itself; helper VMs are plain QEMU processes of the supervisor.
      {"libvirt", "a running libvirt domain (immortal attach --libvirt): libvirt's API and QMP through it, the gdbstub on a socket pair, guest RAM in libvirt's shared file",
       [](const MachineConfig&, Deadline) -> std::unique_ptr<Machine> {
         fail(ExitCode::usage, "libvirt starts its domains itself (virsh start); protect a running one with "
                               "immortal attach --libvirt DOMAIN");
       },
       [](const MachineConfig& c, const nlohmann::json& handle, Deadline d) {
         return std::unique_ptr<Machine>(LibvirtMachine::attach(c, handle, d));
       },
       qemu_launch},
  };
  return all;
}
}  // namespace

const MachineBackend& machine_backend(const std::string& name) {
  for (const auto& b : backends())
    if (b.name == name) return b;
  fail(ExitCode::usage, "no machine backend \"{}\" (there is: {})", name, fmt::join(machine_backend_names(), ", "));
}

std::vector<std::string> machine_backend_names() {
  std::vector<std::string> names;
  for (const auto& b : backends()) names.push_back(b.name);
  return names;
}

}  // namespace immortal::vmm
