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
};

struct MachineConfig {
  std::string name;             // instance name, for logs and process titles
  std::string kernel;           // bzImage
  std::string initrd;
  std::string append;           // kernel command line
  std::uint64_t memory_bytes = 512ull << 20;
  int vcpus = 2;
  Accelerator accelerator = Accelerator::tcg;
  std::string runtime_dir;      // private (0700) directory for sockets
  std::string console_log;      // serial console output file
  // Settings only the backend understands, by name (qemu: "binary", the QEMU program); the
  // rest of immortal carries them without looking inside.
  std::map<std::string, std::string> backend_options;
  std::vector<SharedWindow> shared_windows;
  // The guest's VM outlives its supervisor (a restart or upgrade re-attaches to it); helper VMs
  // such as the repair VM die with it.
  bool outlives_supervisor = false;
};

}  // namespace immortal::vmm
