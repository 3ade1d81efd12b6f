#include "machine.h"

#include <algorithm>

namespace immortal::vmm {

const char* to_string(RunState state) {
  switch (state) {
    case RunState::starting: return "starting";
    case RunState::running: return "running";
    case RunState::paused: return "paused";
    case RunState::panicked: return "panicked";
    case RunState::shutdown: return "shut off";
  }
  return "unknown";
}

const char* to_string(MachineEvent::Kind kind) {
  switch (kind) {
    case MachineEvent::Kind::paused: return "paused";
    case MachineEvent::Kind::resumed: return "resumed";
    case MachineEvent::Kind::breakpoint: return "breakpoint";
    case MachineEvent::Kind::guest_panicked: return "guest-panicked";
    case MachineEvent::Kind::reset: return "reset";
    case MachineEvent::Kind::shutdown: return "shutdown";
    case MachineEvent::Kind::vm_exited: return "vm-exited";
  }
  return "unknown";
}

std::optional<double> hypervisor_downtime_ms(std::optional<std::chrono::steady_clock::time_point> stop_stamp,
                                             std::chrono::steady_clock::time_point stop_from,
                                             std::chrono::steady_clock::time_point stopped_by,
                                             std::optional<std::chrono::steady_clock::time_point> resume_stamp,
                                             std::chrono::steady_clock::time_point resume_asked) {
  // A sentinel rather than the optionals themselves below: GCC 12 warns (wrongly) that an
  // optional time_point may be read uninitialised.
  using TimePoint = std::chrono::steady_clock::time_point;
  const TimePoint stopped = stop_stamp.value_or(TimePoint::min()), resumed = resume_stamp.value_or(TimePoint::min());
  if (stopped < stop_from || stopped > stopped_by + std::chrono::milliseconds(100)) return std::nullopt;
  if (resumed < resume_asked || resumed > std::chrono::steady_clock::now()) return std::nullopt;
  // QEMU sends the news of a breakpoint a moment before it stamps its STOP event: the earlier of
  // the two is when the guest was stopped.
  return std::chrono::duration<double, std::milli>(resumed - std::min(stopped, stopped_by)).count();
}

}  // namespace immortal::vmm
