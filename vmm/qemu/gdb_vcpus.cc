#include "qemu/gdb_vcpus.h"

#include "base/error.h"
#include "qemu/x86_64_gdb_layout.h"

#include <signal.h>

namespace immortal::qemu {

namespace {
constexpr auto kGdbCommandTimeout = std::chrono::seconds(10);
}

GdbVcpus::GdbVcpus(UniqueFd socket, Deadline deadline)
    : gdb_(std::make_unique<GdbstubClient>(std::move(socket), deadline)) {
  threads_ = gdb_->threads(deadline);
  if (threads_.empty()) fail(ExitCode::qemu, "the gdbstub reports no vCPU");
  read_registers(0);  // checks the register layout before anyone relies on it
}

int GdbVcpus::thread_of(int vcpu) const {
  if (vcpu < 0 || vcpu >= count()) fail(ExitCode::failure, "no vCPU {}", vcpu);
  return threads_[static_cast<std::size_t>(vcpu)];
}

X86Registers GdbVcpus::read_registers(int vcpu) {
  return decode_x86_64_registers(gdb_->read_registers(thread_of(vcpu), Deadline::in(kGdbCommandTimeout)));
}

void GdbVcpus::write_registers(int vcpu, const X86Registers& registers) {
  int thread = thread_of(vcpu);
  auto deadline = Deadline::in(kGdbCommandTimeout);
  std::string block = gdb_->read_registers(thread, deadline);
  encode_x86_64_registers(registers, block);
  gdb_->write_registers(thread, block, deadline);
}

void GdbVcpus::insert_breakpoint(std::uint64_t guest_virtual) {
  gdb_->insert_hw_breakpoint(guest_virtual, Deadline::in(kGdbCommandTimeout));
}

void GdbVcpus::remove_breakpoint(std::uint64_t guest_virtual) {
  gdb_->remove_hw_breakpoint(guest_virtual, Deadline::in(kGdbCommandTimeout));
}

void GdbVcpus::write_virtual(int vcpu, std::uint64_t guest_virtual, std::span<const std::uint8_t> bytes) {
  gdb_->write_memory(thread_of(vcpu), guest_virtual, bytes, Deadline::in(kGdbCommandTimeout));
}

std::vector<GdbVcpus::BreakpointStop> GdbVcpus::take_breakpoint_stops() {
  std::vector<BreakpointStop> out;
  for (const auto& stop : gdb_->take_stops()) {
    if (stop.signal != SIGTRAP) continue;  // SIGINT stops are our own pause()
    int vcpu = -1;
    for (std::size_t i = 0; i < threads_.size(); ++i)
      if (threads_[i] == stop.thread) vcpu = static_cast<int>(i);
    out.push_back({vcpu, stop.raw});
  }
  return out;
}

}  // namespace immortal::qemu
