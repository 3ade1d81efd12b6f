// The vCPUs of a QEMU VM as the gdbstub shows them: the calls of the Machine seam that go through
// it (registers by vCPU index, hardware breakpoints, code writes, breakpoint stops), shared by
// the QEMU and libvirt backends. The caller checks that the VM is paused before each call.
#pragma once

#include "base/io.h"
#include "qemu/gdbstub_client.h"
#include "x86_64/registers.h"

#include <chrono>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

namespace immortal::qemu {

class GdbVcpus {
 public:
  // Reads the thread list and checks the register layout once.
  GdbVcpus(UniqueFd socket, Deadline deadline);

  int count() const { return static_cast<int>(threads_.size()); }
  X86Registers read_registers(int vcpu);
  void write_registers(int vcpu, const X86Registers& registers);
  void insert_breakpoint(std::uint64_t guest_virtual);
  void remove_breakpoint(std::uint64_t guest_virtual);
  // Through the vCPU's view (gdbstub "M"): QEMU drops its translations of the patched code.
  void write_virtual(int vcpu, std::uint64_t guest_virtual, std::span<const std::uint8_t> bytes);

  struct BreakpointStop {
    int vcpu = -1;
    std::string raw;
  };
  // The breakpoint stops received (SIGINT stops, our own pauses, are left out).
  std::vector<BreakpointStop> take_breakpoint_stops();
  GdbstubClient& client() { return *gdb_; }

 private:
  int thread_of(int vcpu) const;

  std::unique_ptr<GdbstubClient> gdb_;
  std::vector<int> threads_;  // gdbstub thread id of vCPU i
};

}  // namespace immortal::qemu
