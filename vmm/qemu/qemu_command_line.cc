// QEMU's command line for a machine configuration, and where q35 puts guest RAM.
#include "qemu/qemu_machine.h"

#include "protocol/frame.h"

#include <fmt/format.h>

namespace immortal::qemu {

namespace {
std::string path_in(const std::string& dir, const char* name) { return dir + "/" + name; }
}  // namespace

std::vector<RamSegment> q35_ram_layout(std::uint64_t ram_bytes) {
  std::uint64_t lowmem = ram_bytes >= 0xb0000000ull ? 0x80000000ull : 0xb0000000ull;
  std::uint64_t below = std::min(ram_bytes, lowmem);
  std::vector<RamSegment> segments{{0, 0, below}};
  if (ram_bytes > below) segments.push_back({4ull << 30, below, ram_bytes - below});
  return segments;
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
  std::vector<std::string> args = {
      qemu_binary(c),
      "-name", fmt::format("{},process=immortal-{}", c.name, c.name),
      "-nodefaults", "-no-user-config", "-display", "none",
      "-S",  // start paused: we connect everything before the first instruction
      "-accel", kvm ? "kvm" : "tcg",
      "-cpu", kvm ? "host" : "qemu64",
      "-machine", "q35,memory-backend=guest-ram",
      "-m", fmt::format("{}M", c.memory_bytes >> 20),
      "-smp", fmt::format("{}", c.vcpus),
      "-object", fmt::format("memory-backend-file,id=guest-ram,size={},mem-path=/proc/self/fd/{},share=on",
                             c.memory_bytes, ram_fd),
      "-kernel", c.kernel,
      "-initrd", c.initrd,
      "-append", c.append,
      "-chardev", fmt::format("file,id=console,path={}", c.console_log),
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
  for (const auto& w : c.shared_windows) {
    args.insert(args.end(), {"-object", fmt::format("memory-backend-file,id={},size={},mem-path=/proc/self/fd/{},share=on{}",
                                                    w.id, w.size, w.fd, w.read_only ? ",readonly=on" : ""),
                             "-device", fmt::format("ivshmem-plain,memdev={},addr={:#x}", w.id, w.pci_slot)});
  }
  return args;
}

}  // namespace immortal::qemu
