// The kernel's taint flags (kernel/panic.c tainted_mask).
#pragma once

#include "kernel/kernel.h"

#include <cstdint>
#include <string>

namespace immortal {

// As the kernel prints them: "G" when clean, else the letters of the set flags (e.g. "DOE").
std::string taint_string(std::uint64_t mask);
std::uint64_t read_taint_mask(const Kernel& kernel);

}  // namespace immortal
