// The kernel's taint flags (kernel/panic.c tainted_mask).
#pragma once

#include "kernel/kernel.h"

#include <cstdint>
#include <string>

namespace immortal {

// Bits of tainted_mask (include/linux/panic.h) the recovery reads and clears.
constexpr std::uint64_t kTaintDie = 1ull << 7;   // TAINT_DIE: an oops happened
constexpr std::uint64_t kTaintWarn = 1ull << 9;  // TAINT_WARN: a WARN() fired

// As the kernel prints them: "G" when clean, else the letters of the set flags (e.g. "DOE").
std::string taint_string(std::uint64_t mask);
std::uint64_t read_taint_mask(const Kernel& kernel);

}  // namespace immortal
