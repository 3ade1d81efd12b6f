// What a VM is made of, independent of the backend that runs it.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace immortal::vmm {

enum class Accelerator { kvm, tcg };
inline const char* to_string(Accelerator a) { return a == Accelerator::kvm ? "kvm" : "tcg"; }

// Host shared memory shown to the guest as a PCI memory window at a fixed slot (QEMU backend:
// an ivshmem-plain device). The repair VM sees the crashed guest's RAM (read-only) and its
// mailbox this way.
struct SharedWindow {
  std::string id;
  int fd = -1;              // inherited by the VM process
  std::uint64_t size = 0;   // a power of two
  bool read_only = false;
  int pci_slot = 0;
  int pci_function = 0;  // 0–7: up to eight windows in one slot (the shared repair VM's)
};

// A disk the guest sees as a virtio block device; the first one is the boot disk.
struct DiskConfig {
  std::string path;             // absolute: an image file or a block device
  std::string format = "raw";   // raw | qcow2
  bool read_only = false;
};

// A host port forwarded into the guest (user networking).
struct PortForward {
  std::string protocol = "tcp";  // tcp | udp
  std::string host_address;      // empty: every address
  int host_port = 0;
  int guest_port = 0;
};

// A virtio network interface and what it is plugged into.
struct NetConfig {
  enum class Kind { user, tap, bridge };
  Kind kind = Kind::user;
  std::string host_interface;       // tap: the tap device; bridge: the bridge
  std::vector<PortForward> forwards;  // user only
  std::string mac;                  // 52:54:00:…, stable for the instance
};

// A named virtio-serial port (a "channel", as libvirt calls it) whose output the host appends to
// a file: a guest program finds it by name (/sys/class/virtio-ports/*/name) and writes lines the
// host reads without the guest's kernel log or console in between.
struct ChannelConfig {
  std::string name;  // the port's name in the guest, e.g. org.example.log
  std::string path;  // absolute: the host file the guest's writes are appended to
};

// A disk, interface or channel as `immortal run` takes it (--disk, --net, --channel): for status
// and logs.
std::string describe(const DiskConfig& disk);
std::string describe(const NetConfig& net);
std::string describe(const ChannelConfig& channel);
// A value in that comma-separated syntax (QEMU's own): a comma in it is written ",,".
std::string escape_commas(const std::string& value);

struct MachineConfig;
// What to check when a guest never came up, for the operator ("" when nothing specific).
std::string boot_hint(const MachineConfig& config);

struct MachineConfig {
  std::string name;             // instance name, for logs and process titles
  std::string kernel;           // bzImage; empty: firmware boot from the first disk
  std::string initrd;           // may be empty
  std::string append;           // kernel command line (with kernel only)
  std::vector<DiskConfig> disks;
  std::vector<NetConfig> nets;
  std::vector<ChannelConfig> channels;
  std::uint64_t memory_bytes = 512ull << 20;
  int vcpus = 2;
  Accelerator accelerator = Accelerator::tcg;
  std::string runtime_dir;      // private (0700) directory for sockets
  std::string console_log;      // serial console output file
  // Settings only the backend understands, by name (qemu: "binary", the QEMU program); the
  // rest of immortal carries them without looking inside.
  std::map<std::string, std::string> backend_options;
  std::vector<SharedWindow> shared_windows;
  // Under software emulation, the cache of translated guest code (0: the backend's default, which
  // is sized for a general-purpose guest: QEMU's is 1 GiB, filled as code runs). A helper VM that
  // runs one small program needs far less.
  std::uint64_t emulator_code_cache_bytes = 0;
  // The guest's VM outlives its supervisor (a restart or upgrade re-attaches to it); helper VMs
  // such as the repair VM die with it.
  bool outlives_supervisor = false;
  // The guest's kernel reports the pages it frees and the backend gives their host memory back
  // (a VM nobody pauses to trim: the shared repair VM). Needs a balloon driver in that kernel.
  bool return_free_memory = false;
  // A doorbell: bytes written to the FIFO `doorbell + ".in"` arrive on the VM's second serial port
  // (ttyS1), so that a VM nobody pauses can sleep until it is rung instead of polling. Empty: none.
  // The backend makes the FIFOs.
  std::string doorbell;
};

}  // namespace immortal::vmm
