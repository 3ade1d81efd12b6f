#include "live_kernel.h"

#include "base/error.h"

namespace immortal::vmm {

LiveKernel::LiveKernel(Machine& machine, const ProfileSource& profiles, Opener open)
    : machine_(machine), profiles_(profiles), open_(std::move(open)) {
  if (!open_)
    open_ = [](const PhysicalMemory& memory, const GuestProfile& profile) {
      return Kernel::open(memory, profile, std::nullopt);
    };
}

Kernel& LiveKernel::get() {
  auto current = profiles_.current();
  if (!current) fail(ExitCode::failure, "no guest profile yet (the agent has not reported one)");
  if (!kernel_ || number_ != profiles_.number()) {
    kernel_ = open_(machine_.memory(), current->unpack());  // the unpacked files go once parsed
    profile_ = std::move(current);
    number_ = profiles_.number();
  }
  kernel_->memory().forget_translations();  // the guest ran since the last read
  return *kernel_;
}

Kernel* LiveKernel::built() {
  if (!kernel_ || !profiles_.current() || number_ != profiles_.number()) return nullptr;
  kernel_->memory().forget_translations();
  return kernel_.get();
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
