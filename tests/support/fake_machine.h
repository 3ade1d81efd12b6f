// A scripted Machine for tests of the supervisor's rooms without QEMU: RAM in a vector, vCPU
// registers as data, breakpoints as a set, and machine events raised by the test on demand
// (through an eventfd, as a real backend's descriptors become readable).
#pragma once

#include "base/unique_fd.h"
#include "machine.h"
#include "support/fake_kernel.h"

#include <deque>
#include <optional>
#include <set>
#include <vector>

namespace immortal::test {

class FakeMachine final : public vmm::Machine {
 public:
  FakeMachine(int vcpus, std::size_t ram_bytes);

  // The test's side.
  VectorMemory& ram() { return ram_; }
  std::vector<X86Registers> registers;   // by vCPU
  std::set<std::uint64_t> breakpoints;
  int resets = 0, resumes = 0;
  void raise(vmm::MachineEvent event);
  // What ram_file() gives (agents map it); none unless a test sets one.
  std::optional<RamFile> ram_file_given;
  // vCPU stops at a breakpoint at rip (the machine pauses, as KVM/QEMU stop every vCPU).
  void hit_breakpoint(int vcpu, std::uint64_t rip);
  // The guest reports a panic (pvpanic): the VM stops.
  void panic_event();
  // The VM process is gone: every control call throws Error(qemu) from now on; a shutdown event.
  void vanish();
  bool vanished() const { return vanished_; }

  // Machine.
  void resume() override;
  void pause() override;
  vmm::RunState state() override { return state_; }
  void terminate(std::chrono::milliseconds) override { state_ = vmm::RunState::shutdown; }
  const char* backend() const override { return "fake"; }
  Capabilities capabilities() const override { return {true, false, false, false}; }
  int process_id() const override { return 0; }
  nlohmann::json attach_handle() const override { return {{"fake", true}}; }
  void release() override { released = true; }
  bool released = false;
  int vcpu_count() const override { return static_cast<int>(registers.size()); }
  X86Registers read_registers(int vcpu) override;
  void write_registers(int vcpu, const X86Registers& r) override;
  void insert_breakpoint(std::uint64_t address) override;
  void remove_breakpoint(std::uint64_t address) override;
  void write_virtual(int vcpu, std::uint64_t guest_virtual, std::span<const std::uint8_t> bytes) override;
  void reset() override;
  PhysicalMemory& memory() override { return ram_; }
  std::optional<RamFile> ram_file() const override { return ram_file_given; }
  std::vector<int> event_fds() const override { return {events_fd_.get()}; }
  std::vector<vmm::MachineEvent> drain_events() override;
  void write_native_dump(const std::string& path) override;
  UniqueFd connect_agent_channel(Deadline deadline) override;

 private:
  void check_alive() const;
  VectorMemory ram_;
  vmm::RunState state_ = vmm::RunState::paused;
  std::deque<vmm::MachineEvent> events_;
  UniqueFd events_fd_;
  bool vanished_ = false;
};

}  // namespace immortal::test
