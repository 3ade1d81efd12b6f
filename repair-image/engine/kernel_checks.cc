#include "engine/kernel_checks.h"

#include <cstring>

namespace immortal::repair {

namespace {

struct Entry {
  const char* function;
  KernelCheck check;
};

// Linux 6.1: lib/list_debug.c, mm/usercopy.c, lib/string_helpers.c, kernel/panic.c, mm/slub.c,
// lib/string.c, arch/x86/lib/*, lib/vsprintf.c, lib/kstrtox.c.
constexpr Entry kChecks[] = {
    {"__list_add_valid", {"list debugging refused a corrupt list_add (the list was not changed)", false}},
    {"__list_del_entry_valid", {"list debugging refused a corrupt list_del (the list was not changed)", false}},
    {"usercopy_abort", {"hardened usercopy refused an overflowing copy (nothing was copied)", false}},
    {"__check_object_size", {"hardened usercopy refused an overflowing copy (nothing was copied)", false}},
    {"check_heap_object", {"hardened usercopy refused an overflowing copy (nothing was copied)", false}},
    {"__check_heap_object", {"hardened usercopy refused an overflowing copy (nothing was copied)", false}},
    {"check_stack_object", {"hardened usercopy refused an overflowing copy (nothing was copied)", false}},
    {"fortify_panic", {"FORTIFY_SOURCE refused an overflowing string or memory operation (nothing was written)", false}},
    {"__stack_chk_fail", {"the stack protector found the driver's own stack frame smashed", false}},
    // SLUB's double-free check (set_freepointer's BUG_ON, inlined): only for the driver's frees.
    {"kfree", {"SLUB refused a double free (the object stays free once)", false}},
    {"kmem_cache_free", {"SLUB refused a double free (the object stays free once)", false}},
    {"__kmem_cache_free", {"SLUB refused a double free (the object stays free once)", false}},
    {"__slab_free", {"SLUB refused a double free (the object stays free once)", false}},
    {"do_slab_free", {"SLUB refused a double free (the object stays free once)", false}},
    // Library functions: they touch only their arguments' buffers.
    {"strlen", {"a string function given a bad pointer", true}},
    {"strnlen", {"a string function given a bad pointer", true}},
    {"strcmp", {"a string function given a bad pointer", true}},
    {"strncmp", {"a string function given a bad pointer", true}},
    {"strcasecmp", {"a string function given a bad pointer", true}},
    {"strncasecmp", {"a string function given a bad pointer", true}},
    {"strchr", {"a string function given a bad pointer", true}},
    {"strrchr", {"a string function given a bad pointer", true}},
    {"strnchr", {"a string function given a bad pointer", true}},
    {"strstr", {"a string function given a bad pointer", true}},
    {"strnstr", {"a string function given a bad pointer", true}},
    {"strcpy", {"a string function given a bad pointer", true}},
    {"strncpy", {"a string function given a bad pointer", true}},
    {"strscpy", {"a string function given a bad pointer", true}},
    {"strlcpy", {"a string function given a bad pointer", true}},
    {"strcat", {"a string function given a bad pointer", true}},
    {"strncat", {"a string function given a bad pointer", true}},
    {"strlcat", {"a string function given a bad pointer", true}},
    {"strspn", {"a string function given a bad pointer", true}},
    {"strcspn", {"a string function given a bad pointer", true}},
    {"strpbrk", {"a string function given a bad pointer", true}},
    {"strsep", {"a string function given a bad pointer", true}},
    {"sysfs_streq", {"a string function given a bad pointer", true}},
    {"memcmp", {"a memory function given a bad pointer", true}},
    {"bcmp", {"a memory function given a bad pointer", true}},
    {"memchr", {"a memory function given a bad pointer", true}},
    {"memchr_inv", {"a memory function given a bad pointer", true}},
    {"memscan", {"a memory function given a bad pointer", true}},
    {"memcpy", {"a memory function given a bad pointer", true}},
    {"__memcpy", {"a memory function given a bad pointer", true}},
    {"memcpy_orig", {"a memory function given a bad pointer", true}},
    {"memmove", {"a memory function given a bad pointer", true}},
    {"__memmove", {"a memory function given a bad pointer", true}},
    {"memset", {"a memory function given a bad pointer", true}},
    {"__memset", {"a memory function given a bad pointer", true}},
    {"memset_orig", {"a memory function given a bad pointer", true}},
    {"vsnprintf", {"a formatting function given a bad pointer", true}},
    {"vscnprintf", {"a formatting function given a bad pointer", true}},
    {"snprintf", {"a formatting function given a bad pointer", true}},
    {"scnprintf", {"a formatting function given a bad pointer", true}},
    {"sprintf", {"a formatting function given a bad pointer", true}},
    {"vsprintf", {"a formatting function given a bad pointer", true}},
    {"sscanf", {"a formatting function given a bad pointer", true}},
    {"vsscanf", {"a formatting function given a bad pointer", true}},
    {"string", {"a formatting function given a bad pointer", true}},          // lib/vsprintf.c helpers
    {"string_nocheck", {"a formatting function given a bad pointer", true}},
    {"pointer", {"a formatting function given a bad pointer", true}},
    {"kstrtoint", {"a number parser given a bad pointer", true}},
    {"kstrtouint", {"a number parser given a bad pointer", true}},
    {"kstrtoll", {"a number parser given a bad pointer", true}},
    {"kstrtoull", {"a number parser given a bad pointer", true}},
    {"kstrtol", {"a number parser given a bad pointer", true}},
    {"kstrtoul", {"a number parser given a bad pointer", true}},
    {"_kstrtoul", {"a number parser given a bad pointer", true}},
    {"_kstrtol", {"a number parser given a bad pointer", true}},
    {"kstrtobool", {"a number parser given a bad pointer", true}},
    {"_parse_integer", {"a number parser given a bad pointer", true}},
    {"_parse_integer_limit", {"a number parser given a bad pointer", true}},
    {"simple_strtoul", {"a number parser given a bad pointer", true}},
    {"simple_strtoull", {"a number parser given a bad pointer", true}},
    {"simple_strtol", {"a number parser given a bad pointer", true}},
};

// Where a driver's busy-wait loop spends its time: delays and clock reads, which keep no state
// of their own between instructions (a task stopped in them can be ended there).
constexpr Entry kBusyWaits[] = {
    {"__const_udelay", {"a busy-wait delay (udelay)", true}},
    {"__udelay", {"a busy-wait delay (udelay)", true}},
    {"__ndelay", {"a busy-wait delay (ndelay)", true}},
    {"__delay", {"a busy-wait delay", true}},
    {"delay_tsc", {"a busy-wait delay (TSC)", true}},
    {"delay_loop", {"a busy-wait delay (loop)", true}},
    {"delay_halt", {"a busy-wait delay (halt)", true}},
    {"delay_halt_tpause", {"a busy-wait delay (tpause)", true}},
    {"delay_halt_mwaitx", {"a busy-wait delay (mwaitx)", true}},
    {"ktime_get", {"a clock read", true}},
    {"ktime_get_raw", {"a clock read", true}},
    {"ktime_get_mono_fast_ns", {"a clock read", true}},
    {"ktime_get_real_ts64", {"a clock read", true}},
    {"read_tsc", {"a clock read", true}},
};

std::string base(std::string name) {
  if (auto dot = name.find('.'); dot != std::string::npos) name.resize(dot);
  return name;
}

}  // namespace

const KernelCheck* kernel_check(const std::string& function) {
  std::string name = base(function);
  for (const auto& e : kChecks)
    if (name == e.function) return &e.check;
  return nullptr;
}

const KernelCheck* busy_wait_helper(const std::string& function) {
  std::string name = base(function);
  for (const auto& e : kBusyWaits)
    if (name == e.function) return &e.check;
  return nullptr;
}

}  // namespace immortal::repair
