// Crashes the kernel raised on a driver's behalf (docs/recovery.md, "Crashes in kernel code the
// driver called"): the faulting instruction is in the kernel's own code, but a driver frame
// further up made the request, and the kernel code between touched nothing but what the driver
// handed it. Two families:
//
// - hardening checks that stop *before* doing damage: list debugging refusing a corrupt
//   list_add/list_del, hardened usercopy and FORTIFY refusing an overflowing copy, the stack
//   protector finding the driver's own frame smashed (it calls panic());
// - library functions that only read or write the buffers their caller passed (strlen, memcpy,
//   vsnprintf …): a bad pointer from the driver faults inside them with no kernel state changed.
//
// Anything else in the kernel's code stays a reason to reboot: it may have been half-way through
// changing shared state. A slab double free caught by SLUB is told by its report ("kernel BUG at
// mm/slub.c") and counts as a check only when it is the driver's kfree() or kmem_cache_free().
#pragma once

#include <string>

namespace immortal::repair {

struct KernelCheck {
  const char* what;    // for the report: "list debugging refused a corrupt list_del"
  bool library;        // a library function rather than a check
};

// The check or library function `function` (a kernel function name, with or without the
// compiler's .isra/.constprop/.cold suffixes) is, or nullptr.
const KernelCheck* kernel_check(const std::string& function);

// A kernel function a driver's busy-wait loop calls (udelay and its helpers, clock reads): a
// task the soft-lockup watchdog stopped inside one is still, in effect, in the driver's loop.
const KernelCheck* busy_wait_helper(const std::string& function);

}  // namespace immortal::repair
