// QEMU's command line for a machine configuration, and where q35 puts guest RAM.
#include "qemu/qemu_machine.h"

#include "protocol/frame.h"

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <algorithm>

namespace immortal::qemu {

std::string path_in(const std::string& dir, const char* name) { return dir + "/" + name; }

std::vector<RamSegment> q35_ram_layout(std::uint64_t ram_bytes) {
  std::uint64_t lowmem = ram_bytes >= 0xb0000000ull ? 0x80000000ull : 0xb0000000ull;
  std::uint64_t below = std::min(ram_bytes, lowmem);
  std::vector<RamSegment> segments{{0, 0, below}};
  if (ram_bytes > below) segments.push_back({4ull << 30, below, ram_bytes - below});
  return segments;
}

std::string qemu_run_as(const vmm::MachineConfig& config) {
  auto it = config.backend_options.find("user");
  return it == config.backend_options.end() ? "" : it->second;
}

std::string qemu_binary(const vmm::MachineConfig& config) {
  auto it = config.backend_options.find("binary");
  return it != config.backend_options.end() && !it->second.empty() ? it->second : "qemu-system-x86_64";
}

std::vector<std::string> qemu_command_line(const vmm::MachineConfig& c, int ram_fd) {
  const std::string& dir = c.runtime_dir;
  auto socket = [&](const char* id, const char* file) {
    return fmt::format("socket,id={},path={},server=on,wait=off", id, path_in(dir, file));
  };
  bool kvm = c.accelerator == vmm::Accelerator::kvm;
  std::string accel = kvm ? "kvm" : "tcg";
  if (!kvm && c.emulator_code_cache_bytes)
    accel += fmt::format(",tb-size={}", std::max<std::uint64_t>(c.emulator_code_cache_bytes >> 20, 1));
  std::vector<std::string> args = {
      qemu_binary(c),
      "-name", fmt::format("{},process=immortal-{}", c.name, c.name),
      "-nodefaults", "-no-user-config", "-display", "none",
      // QEMU's own seccomp sandbox: no obsolete calls, no privilege changes, no resource
      // control; no new processes unless a bridge needs qemu-bridge-helper. QEMU installs it
      // before it drops root (-runas below), so that one drop needs set*id allowed; once it is
      // nobody, those calls cannot make it root again.
      "-sandbox", fmt::format("on,obsolete=deny,elevateprivileges={},spawn={},resourcecontrol=deny",
                              qemu_run_as(c).empty() ? "deny" : "allow",
                              std::any_of(c.nets.begin(), c.nets.end(),
                                          [](const auto& n) { return n.kind == vmm::NetConfig::Kind::bridge; })
                                  ? "allow"
                                  : "deny"),
      "-S",  // start paused: we connect everything before the first instruction
      "-accel", accel,
      "-cpu", kvm ? "host" : "qemu64",
      "-machine", "q35,memory-backend=guest-ram",
      "-m", fmt::format("{}M", c.memory_bytes >> 20),
      "-smp", fmt::format("{}", c.vcpus),
      "-object", fmt::format("memory-backend-file,id=guest-ram,size={},mem-path=/proc/self/fd/{},share=on",
                             c.memory_bytes, ram_fd),
      // The serial console: a socket `immortal console` connects to, logged to console_log
      // whether or not anyone is connected (QEMU writes the log itself, appending: the launch
      // empties it, and the supervisor can start it again when it grows too large).
      "-chardev", fmt::format("socket,id=console,path={},server=on,wait=off,logfile={},logappend=on",
                              path_in(dir, "console.sock"), c.console_log),
      "-serial", "chardev:console",
      "-chardev", socket("qmp", "qmp.sock"),
      "-mon", "chardev=qmp,mode=control",
      "-chardev", socket("gdb", "gdb.sock"),
      "-gdb", "chardev:gdb",
      "-device", "virtio-serial-pci,id=agent-serial",
      "-chardev", socket("agent", "agent.sock"),
      "-device", fmt::format("virtserialport,chardev=agent,name={}", agent::kPortName),
      "-device", "pvpanic-pci",
      "-device", "vmcoreinfo",
      // A panic the guest reports (pvpanic) is an event, not a stop: the guest's panic() calls
      // its notifiers before it flushes the console, so pausing there would cut the console
      // short. The supervisor pauses the VM itself a moment later.
      "-action", "panic=none",
  };
  if (!c.kernel.empty()) {
    args.insert(args.end(), {"-kernel", c.kernel, "-append", c.append});
    if (!c.initrd.empty()) args.insert(args.end(), {"-initrd", c.initrd});
  }
  // Disks as -blockdev JSON: paths need no escaping. With no kernel given, the firmware boots
  // the first disk's own boot loader.
  for (std::size_t i = 0; i < c.disks.size(); ++i) {
    const auto& d = c.disks[i];
    std::string node = fmt::format("disk{}", i);
    nlohmann::json blockdev = {{"driver", d.format}, {"node-name", node}, {"read-only", d.read_only},
                               {"file", {{"driver", d.path.starts_with("/dev/") ? "host_device" : "file"},
                                         {"filename", d.path}, {"read-only", d.read_only}}}};
    args.insert(args.end(), {"-blockdev", blockdev.dump(),
                             "-device", fmt::format("virtio-blk-pci,drive={},serial=immortal-{}{}", node, node,
                                                    i == 0 && c.kernel.empty() ? ",bootindex=0" : "")});
  }
  for (std::size_t i = 0; i < c.nets.size(); ++i) {
    const auto& n = c.nets[i];
    std::string id = fmt::format("net{}", i), netdev;
    switch (n.kind) {
      case vmm::NetConfig::Kind::user:
        netdev = "user,id=" + id;
        for (const auto& f : n.forwards)
          netdev += fmt::format(",hostfwd={}:{}:{}-:{}", f.protocol, f.host_address, f.host_port, f.guest_port);
        break;
      case vmm::NetConfig::Kind::tap:
        netdev = fmt::format("tap,id={},ifname={},script=no,downscript=no", id, n.host_interface);
        break;
      case vmm::NetConfig::Kind::bridge:
        netdev = fmt::format("bridge,id={},br={}", id, n.host_interface);
        break;
    }
    args.insert(args.end(), {"-netdev", netdev, "-device",
                             fmt::format("virtio-net-pci,netdev={}{}", id, n.mac.empty() ? "" : ",mac=" + n.mac)});
  }
  // Channels share the agent's virtio-serial bus; QEMU appends what the guest writes to the file.
  for (std::size_t i = 0; i < c.channels.size(); ++i) {
    args.insert(args.end(), {"-chardev", fmt::format("file,id=channel{},path={},append=on", i, vmm::escape_commas(c.channels[i].path)),
                             "-device", fmt::format("virtserialport,bus=agent-serial.0,chardev=channel{},name={}", i,
                                                    c.channels[i].name)});
  }
  for (const auto& w : c.shared_windows) {
    // Functions of one slot: function 0 says the slot has more.
    bool more = w.pci_function == 0 && std::any_of(c.shared_windows.begin(), c.shared_windows.end(), [&](const auto& o) {
      return o.pci_slot == w.pci_slot && o.pci_function != 0;
    });
    args.insert(args.end(), {"-object", fmt::format("memory-backend-file,id={},size={},mem-path=/proc/self/fd/{},share=on{}",
                                                    w.id, w.size, w.fd, w.read_only ? ",readonly=on" : ""),
                             "-device", fmt::format("ivshmem-plain,memdev={},addr={:#x}.{}{}", w.id, w.pci_slot, w.pci_function,
                                                    more ? ",multifunction=on" : "")});
  }
  // The doorbell: a pipe chardev reads DOORBELL.in (and would write DOORBELL.out) on the second UART.
  if (!c.doorbell.empty())
    args.insert(args.end(), {"-chardev", fmt::format("pipe,id=doorbell,path={}", vmm::escape_commas(c.doorbell)),
                             "-serial", "chardev:doorbell"});
  // Free page reporting: pages the guest's kernel reports free are punched out of its RAM file.
  if (c.return_free_memory) args.insert(args.end(), {"-device", "virtio-balloon-pci,free-page-reporting=on"});
  if (std::string user = qemu_run_as(c); !user.empty()) args.insert(args.end(), {"-runas", user});
  return args;
}

}  // namespace immortal::qemu
