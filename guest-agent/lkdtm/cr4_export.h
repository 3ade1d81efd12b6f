/* SPDX-License-Identifier: GPL-2.0 */
/*
 * Force-included into LKDTM's bugs.c (see Kbuild): the guest kernel does not export
 * native_write_cr4 to modules (it does only when it builds LKDTM as a module itself), so every
 * use of the name in bugs.c goes through the kernel's own function, looked up at run time.
 * UNSET_SMEP both calls it and reads its code, so the name must stay the real function's
 * address, not a wrapper's.
 */
#ifndef LKDTM_CR4_EXPORT_H
#define LKDTM_CR4_EXPORT_H

/* lkdtm.h first: it sets pr_fmt before any printk header is seen. */
#include "lkdtm.h"
/* The kernel's declarations, seen before the name is redefined below. */
#include <asm/special_insns.h>
#include <asm/tlbflush.h>

void (*lkdtm_native_write_cr4(void))(unsigned long val);
#define native_write_cr4 (*lkdtm_native_write_cr4())

#endif
