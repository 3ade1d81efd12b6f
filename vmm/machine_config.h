// What a VM is made of, independent of the backend that runs it.
#pragma once

#include <cstdint>
#include <string>

namespace immortal::vmm {

enum class Accelerator { kvm, tcg };
inline const char* to_string(Accelerator a) { return a == Accelerator::kvm ? "kvm" : "tcg"; }

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
  std::string qemu_binary = "qemu-system-x86_64";
};

}  // namespace immortal::vmm
