// A healthy-guest profile rebuilt from a kernel's own memory, for dumps taken without one (a
// kdump vmcore, a `virsh dump` of a guest that never ran our agent). The kernel keeps what the
// profile holds: its symbols in the compressed kallsyms tables (kernel/kallsyms.c, written by
// scripts/kallsyms.c), its BTF between __start_BTF and __stop_BTF, its release in VMCOREINFO.
// VMCOREINFO gives the tables' addresses (SYMBOL(kallsyms_*), from the upstream change
// "vmcoreinfo: include kallsyms symbols", which Debian's 6.1 carries; older kernels lack them)
// and the page tables to read them through. drgn's libdrgn/kallsyms.c reads the same tables.
#pragma once

#include "kernel/vmcoreinfo.h"
#include "memory/physical_memory.h"
#include "profile/guest_profile.h"

namespace immortal {

// Rebuilds what a healthy-guest profile holds from the kernel's own memory: kallsyms text in
// /proc/kallsyms format (decoded from the kernel's compressed kallsyms tables, whose addresses
// VMCOREINFO gives), the vmlinux BTF (__start_BTF..__stop_BTF), the release. Throws
// Error(ExitCode::bad_input) with a clear message when the memory lacks what is needed.
//
// Loaded modules are added when the kernel's BTF describes struct module: their symbols as
// /proc/kallsyms shows them ("addr t name\t[module]") and /proc/modules lines. A module list
// that cannot be read leaves both out; the kernel image's symbols are enough to open the dump.
// boot_id, taken_at and the VMCOREINFO location stay empty: memory does not say them.
GuestProfile profile_from_memory(const PhysicalMemory& memory, const Vmcoreinfo& vmcoreinfo);

}  // namespace immortal
