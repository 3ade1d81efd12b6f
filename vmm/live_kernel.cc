#include "live_kernel.h"

#include "base/error.h"

namespace immortal::vmm {

Kernel& LiveKernel::get() {
  auto current = profiles_.current();
  if (!current) fail(ExitCode::failure, "no guest profile yet (the agent has not reported one)");
  if (!kernel_ || number_ != profiles_.number()) {
    kernel_ = Kernel::open(machine_.memory(), *current, std::nullopt);
    profile_ = std::move(current);
    number_ = profiles_.number();
  }
  kernel_->memory().forget_translations();  // the guest ran since the last read
  return *kernel_;
}

void LiveKernel::forget() {
  kernel_.reset();
  number_ = 0;
}

PauseGuard::PauseGuard(Machine& machine) : machine_(machine) {
  if (machine_.state() == RunState::running) {
    machine_.pause();
    resume_ = true;
  }
}

PauseGuard::~PauseGuard() {
  if (!resume_) return;
  try {
    machine_.resume();
  } catch (...) {
    // Already leaving by an exception; the supervisor sees the VM's state on its next turn.
  }
}

void PauseGuard::release() {
  if (!resume_) return;
  resume_ = false;
  machine_.resume();
}

}  // namespace immortal::vmm
