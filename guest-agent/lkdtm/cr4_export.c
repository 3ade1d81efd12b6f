// SPDX-License-Identifier: GPL-2.0
/*
 * The kernel's native_write_cr4 for LKDTM's UNSET_SMEP (see cr4_export.h): the guest kernel
 * does not export it, and kallsyms_lookup_name is not exported either since 5.7, so the address
 * of kallsyms_lookup_name is taken from a kprobe placed on it (and removed at once).
 */
#include "lkdtm.h"
#include <linux/kprobes.h>

static void missing_write_cr4(unsigned long val)
{
	pr_err("FAIL: native_write_cr4 not found; CR4 left unchanged\n");
}

void (*lkdtm_native_write_cr4(void))(unsigned long val)
{
	static void (*write_cr4)(unsigned long val);
	unsigned long (*lookup)(const char *name);
	struct kprobe kp = { .symbol_name = "kallsyms_lookup_name" };

	if (write_cr4)
		return write_cr4;
	if (register_kprobe(&kp) == 0) {
		lookup = (void *)kp.addr;
		unregister_kprobe(&kp);
		write_cr4 = (void *)lookup("native_write_cr4");
	}
	if (!write_cr4)
		write_cr4 = missing_write_cr4;
	return write_cr4;
}
