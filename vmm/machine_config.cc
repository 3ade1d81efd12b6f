#include "machine_config.h"

#include <fmt/format.h>

namespace immortal::vmm {

std::string escape_commas(const std::string& value) {
  std::string out;
  for (char c : value) out += c == ',' ? std::string(",,") : std::string(1, c);
  return out;
}

std::string describe(const DiskConfig& disk) {
  return fmt::format("{},format={}{}", escape_commas(disk.path), disk.format, disk.read_only ? ",readonly" : "");
}

std::string describe(const ChannelConfig& channel) {
  return fmt::format("{},path={}", channel.name, escape_commas(channel.path));
}

std::string describe(const NetConfig& net) {
  switch (net.kind) {
    case NetConfig::Kind::tap: return "tap=" + net.host_interface;
    case NetConfig::Kind::bridge: return "bridge=" + net.host_interface;
    case NetConfig::Kind::user: break;
  }
  std::string out = "user";
  for (const auto& f : net.forwards)
    out += fmt::format(",hostfwd={}:{}:{}-:{}", f.protocol, f.host_address, f.host_port, f.guest_port);
  return out;
}

std::string boot_hint(const MachineConfig& config) {
  if (!config.kernel.empty() || config.disks.empty()) return "";
  return "(no --kernel: the firmware boots the first --disk; is it bootable, with the agent installed and "
         "console=ttyS0?)\n";
}

}  // namespace immortal::vmm
