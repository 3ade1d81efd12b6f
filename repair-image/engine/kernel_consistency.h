// Sanity of the kernel structures a resumed guest relies on and a repair reads: the task list
// and the module list must be rings that come back to their heads, with sizes a kernel can
// have. A crashed kernel that fails these is not resumed (docs/recovery.md: a hostile or
// badly corrupted guest is rebooted, with its bundle).
#pragma once

#include "kernel/kernel.h"

#include <string>
#include <vector>

namespace immortal::repair {

// Reasons the kernel's core structures cannot be trusted (empty: none found). Bounded: every
// walk stops at a node seen before, at unreadable memory or at a count limit.
std::vector<std::string> check_kernel_consistency(const Kernel& kernel);

}  // namespace immortal::repair
