#include "machine.h"

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

}  // namespace immortal::vmm
