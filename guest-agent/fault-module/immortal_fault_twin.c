// SPDX-License-Identifier: GPL-2.0
/*
 * immortal_fault_twin: the same faulty driver under another module name. It is in the guest
 * image but not loaded at boot, so the healthy-guest profile does not know it: loading it in
 * place of immortal_fault and crashing it at once is how the tests check recovery from a driver
 * whose symbols the supervisor has never seen (docs/recovery.md).
 */
#include "immortal_fault.c"
