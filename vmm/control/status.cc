#include "control/status.h"

#include <unistd.h>

namespace immortal::vmm {

nlohmann::json instance_status(const StatusSources& from) {
  using nlohmann::json;
  const auto& m = from.machine;
  auto seconds_since = [](Clock::time_point t) { return ms_since(t) / 1000; };
  json s = {{"name", m.name},
            {"state", to_string(from.state)},
            {"supervisor_pid", ::getpid()},
            {"backend", from.vm ? from.vm->backend() : ""},
            {"vm_pid", from.vm ? from.vm->process_id() : 0},
            {"capabilities", json::array()},
            {"accelerator", to_string(m.accelerator)},
            {"accelerator_reason", from.accelerator.reason},
            {"recovery", from.recovery_enabled ? "on" : "off"},
            {"vcpus", m.vcpus},
            {"memory_bytes", m.memory_bytes},
            {"kernel", m.kernel},
            {"initrd", m.initrd},
            {"runtime_dir", from.runtime_dir},
            {"console_log", m.console_log},
            {"console_socket", from.vm ? from.vm->console_socket() : ""},
            {"disks", json::array()},
            {"nets", json::array()},
            {"channels", json::array()},
            {"uptime_s", seconds_since(from.started)}};
  for (const auto& d : m.disks) s["disks"].push_back(describe(d));
  for (const auto& n : m.nets) s["nets"].push_back({{"net", describe(n)}, {"mac", n.mac}});
  for (const auto& ch : m.channels) s["channels"].push_back(describe(ch));
  if (from.vm) {
    auto c = from.vm->capabilities();
    for (auto [on, what] : {std::pair{c.breakpoints, "breakpoints"}, {c.native_dump, "native_dump"},
                            {c.shared_ram, "shared_ram"}, {c.attach, "attach"}})
      if (on) s["capabilities"].push_back(what);
  }
  if (from.boot_time) s["boot_time_ms"] = from.boot_time->count();
  const AgentChannel* agent = from.agent;
  // A crashed guest's agent cannot answer, even though its channel is still open.
  json a = {{"connected", from.state == GuestState::running && agent && agent->hello() && !agent->closed()},
            {"heartbeats", agent ? agent->heartbeats() : 0}};
  if (agent && agent->last_heard()) a["last_heard_s"] = seconds_since(*agent->last_heard());
  if (agent && agent->hello()) {
    const auto& h = *agent->hello();
    s["kernel_release"] = h.kernel_release;
    s["boot_id"] = h.boot_id;
    a["version"] = h.agent_version;
    a["protocol"] = agent->protocol();
    a["modules_generation"] = agent->modules_generation();  // changes of the guest's module list
  }
  s["agent"] = a;
  if (from.profiles) s["profile"] = from.profiles->status();
  if (from.recovery) {
    s["recovery_state"] = from.recovery->status();
    if (auto v = from.recovery->verification()) s["verification"] = *v;
  } else {
    s["recovery_state"] = {{"armed", false}, {"crashes", from.ledger.crashes()}, {"recovered", from.ledger.recoveries()},
                           {"reboots", from.ledger.reboots()}};
  }
  s["recovery_state"]["event_log"] = from.event_log;
  if (auto last = from.ledger.last_json(); !last.is_null()) s["last_crash"] = last;
  if (from.repair) s["repair"] = from.repair->status();
  if (from.bundles) s["bundles"] = from.bundles->status();
  return s;
}

}  // namespace immortal::vmm
