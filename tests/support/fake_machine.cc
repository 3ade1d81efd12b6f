#include "support/fake_machine.h"

#include "base/error.h"

#include <sys/eventfd.h>
#include <unistd.h>

#include <cstring>

namespace immortal::test {

FakeMachine::FakeMachine(int vcpus, std::size_t ram_bytes)
    : registers(static_cast<std::size_t>(vcpus)), ram_(ram_bytes), events_fd_(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK)) {}

void FakeMachine::check_alive() const {
  if (vanished_) fail(ExitCode::qemu, "the VM process is gone");
}

void FakeMachine::raise(vmm::MachineEvent event) {
  events_.push_back(std::move(event));
  std::uint64_t one = 1;
  [[maybe_unused]] auto n = ::write(events_fd_.get(), &one, sizeof one);
}

void FakeMachine::hit_breakpoint(int vcpu, std::uint64_t rip) {
  registers.at(static_cast<std::size_t>(vcpu)).rip = rip;
  state_ = vmm::RunState::paused;
  raise({vmm::MachineEvent::Kind::breakpoint, vcpu, "hit"});
}

void FakeMachine::panic_event() {
  state_ = vmm::RunState::panicked;
  raise({vmm::MachineEvent::Kind::guest_panicked, -1, "pvpanic"});
}

void FakeMachine::vanish() {
  vanished_ = true;
  state_ = vmm::RunState::shutdown;
  raise({vmm::MachineEvent::Kind::shutdown, -1, "the VM process exited"});
}

void FakeMachine::resume() {
  check_alive();
  state_ = vmm::RunState::running;
  ++resumes;
  raise({vmm::MachineEvent::Kind::resumed, -1, "resumed"});
}

void FakeMachine::pause() {
  check_alive();
  state_ = vmm::RunState::paused;
}

X86Registers FakeMachine::read_registers(int vcpu) {
  check_alive();
  return registers.at(static_cast<std::size_t>(vcpu));
}

void FakeMachine::write_registers(int vcpu, const X86Registers& r) {
  check_alive();
  registers.at(static_cast<std::size_t>(vcpu)) = r;
}

void FakeMachine::insert_breakpoint(std::uint64_t address) {
  check_alive();
  breakpoints.insert(address);
}

void FakeMachine::remove_breakpoint(std::uint64_t address) {
  check_alive();
  breakpoints.erase(address);
}

void FakeMachine::write_virtual(int, std::uint64_t guest_virtual, std::span<const std::uint8_t> bytes) {
  check_alive();
  if (guest_virtual < kKernelBase) fail(ExitCode::failure, "the fake machine maps only the kernel image");
  ram_.write(guest_virtual - kKernelBase, std::as_bytes(bytes));
}

void FakeMachine::reset() {
  check_alive();
  ++resets;
  breakpoints.clear();
  raise({vmm::MachineEvent::Kind::reset, -1, "reset"});
}

std::vector<vmm::MachineEvent> FakeMachine::drain_events() {
  std::uint64_t count;
  [[maybe_unused]] auto n = ::read(events_fd_.get(), &count, sizeof count);
  std::vector<vmm::MachineEvent> out(events_.begin(), events_.end());
  events_.clear();
  return out;
}

void FakeMachine::write_native_dump(const std::string&) { fail(ExitCode::failure, "the fake machine has no native dump"); }

UniqueFd FakeMachine::connect_agent_channel(Deadline) { fail(ExitCode::failure, "the fake machine has no agent port"); }

}  // namespace immortal::test
