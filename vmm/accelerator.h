// Choosing the accelerator: KVM only where it really runs guest code at hardware speed.
//
// /dev/kvm can exist and work yet emulate every instruction (nested setups without hardware
// virtualisation pass-through: ~3.5 M instructions/s measured on our CI hosts, where a Linux
// guest does not boot in useful time). So we do not trust its presence: we run a tiny guest
// (a counted loop in real mode) under KVM and time it.
#pragma once

#include "machine_config.h"

#include <string>

namespace immortal::vmm {

struct AcceleratorChoice {
  Accelerator accelerator = Accelerator::tcg;
  std::string reason;  // one line for the operator: why this one
  double kvm_instructions_per_second = 0;  // 0 if not measured
};

// Probes /dev/kvm (bounded to about one second) and decides.
AcceleratorChoice choose_accelerator();

// KVM counts as fast from this rate on. Hardware virtualisation runs the probe loop at
// billions of instructions per second; an emulating KVM at a few million; TCG in between.
inline constexpr double kFastKvmInstructionsPerSecond = 300e6;

}  // namespace immortal::vmm
