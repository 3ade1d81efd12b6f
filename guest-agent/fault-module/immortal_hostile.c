// SPDX-License-Identifier: GPL-2.0
/*
 * immortal_hostile: a hostile guest, for testing that the host-side analysis stays bounded.
 *
 * It corrupts core kernel structures on purpose, in the ways that make a reader of the crashed
 * guest's memory loop forever, follow pointers into nothing or allocate absurd amounts, then
 * calls panic() itself: a panic, not an oops, since the supervisor intercepts at panic()'s first
 * instruction while an oops would first print the module list and fault again on the
 * corruption. A user process writes a scenario name to /dev/immortal-hostile:
 *
 *   cyclic-tasks     the task list (init_task.tasks) becomes a cycle that never comes back to
 *                    its head: the second task's tasks.next points back to the first task after
 *                    init_task, and the first task's tasks.prev to the second, so a walk from
 *                    &init_task.tasks loops in either direction (a self-loop should only one
 *                    task follow init_task).
 *   wild-modules     this module's list.next and list.prev (the kernel's module list; the last
 *                    module loaded is the first after the list head) point into unmapped kernel
 *                    space: two addresses from a fixed set, each checked unmapped at the time
 *                    with copy_from_kernel_nofault() (the layout depends on KASLR and paging
 *                    levels).
 *   absurd-lengths   this module's core_layout.size, text_size, ro_size and ro_after_init_size
 *                    become UINT_MAX (so base + size wraps past the top of the address space),
 *                    its name's 56 bytes (MODULE_NAME_LEN) are all non-NUL: no terminator, and
 *                    (with the ORC unwinder) its ORC table claims UINT_MAX entries at unmapped
 *                    addresses, for a host unwinding through this module's frames.
 *   giant-printk     the printk ring claims 2^24 descriptors (its count_bits) and a head 2^24 - 1
 *                    records past its tail: a reader that trusts it walks 16 M descriptors,
 *                    nearly all outside the real array.
 *   page-table-loop  a free slot of the kernel's top page table (init_top_pgt, the guard hole
 *                    at 0xffff800000000000) points back to the table itself, and this module's
 *                    list.next into that slot: a reader following the list reads page tables
 *                    as a struct module, through a loop of tables.
 *   all              all of the above, and the current process's comm becomes 16 non-printable
 *                    bytes, again without a terminator.
 *   escapes          no crash: the writing process's comm becomes a terminal escape sequence
 *                    (set the window title, clear the screen) and a kernel log line carries
 *                    colour and title escapes, for the host's tools to show escaped.
 *
 * Each but escapes ends in panic("immortal_hostile: SCENARIO"). The corruption is done with interrupts off,
 * immediately before the panic, so this CPU runs nothing that walks the broken structures in
 * between (another CPU could, for that short while). prb and init_top_pgt are not exported to
 * modules, nor is kallsyms_lookup_name in 6.1: its address comes from a kprobe placed on it
 * (giant-printk and page-table-loop need CONFIG_KPROBES, and are skipped, said so, without).
 * What is not corrupted: the module's kallsyms (panic()'s own backtrace reads them).
 *
 * Anything else written (unknown name, more than 64 bytes, an empty write) gets -EINVAL. Not
 * loaded at boot: a test loads it (insmod /lib/modules/immortal_hostile.ko) and then crashes
 * it. docs/fault-catalogue.md lists the scenarios.
 */
#include <linux/fs.h>
#include <linux/irqflags.h>
#include <linux/kprobes.h>
#include <linux/kernel.h>
#include <linux/limits.h>
#include <linux/list.h>
#include <linux/miscdevice.h>
#include <linux/module.h>
#include <linux/sched.h>
#include <linux/sched/task.h>
#include <linux/string.h>
#include <linux/uaccess.h>

#define IMMORTAL_HOSTILE_MAX_WRITE 64

/*
 * Kernel addresses that are normally unmapped (Documentation/x86/x86_64/mm.rst): the hole below
 * vmalloc's unrandomized base, the guard hole before the direct map (4 levels), the unused hole
 * above the ESPFIX stacks (4 and 5 levels), the guard hole of the 5-level layout.
 */
static const unsigned long immortal_hostile_wild[] = {
	0xffffc8ffdead0000UL,
	0xffff8000deadbe00UL,
	0xffffff8fdead0000UL,
	0xff0fdeadbeef0000UL,
};

/* The first wild address, from index @from on, that reads fault right now. */
static unsigned long immortal_hostile_unmapped(unsigned int from)
{
	unsigned int i;
	unsigned long probe;

	for (i = 0; i < ARRAY_SIZE(immortal_hostile_wild); i++) {
		unsigned long addr = immortal_hostile_wild[(from + i) % ARRAY_SIZE(immortal_hostile_wild)];

		if (copy_from_kernel_nofault(&probe, (const void *)addr, sizeof(probe)))
			return addr;
	}
	/* All mapped (never seen): still not a module, which is what matters most. */
	return immortal_hostile_wild[from % ARRAY_SIZE(immortal_hostile_wild)];
}

/* kallsyms_lookup_name(), found through a kprobe on it (it is not exported); 0 without kprobes. */
static unsigned long immortal_hostile_lookup(const char *name)
{
	static unsigned long (*lookup)(const char *name);

	if (!lookup) {
#ifdef CONFIG_KPROBES
		struct kprobe kp = { .symbol_name = "kallsyms_lookup_name" };

		if (register_kprobe(&kp) < 0)
			return 0;
		lookup = (unsigned long (*)(const char *))kp.addr;
		unregister_kprobe(&kp);
#endif
		if (!lookup)
			return 0;
	}
	return lookup(name);
}

/* Scenarios are noinline functions named after them, as in immortal_fault. */

static noinline void immortal_hostile_cyclic_tasks(void)
{
	struct list_head *head = &init_task.tasks;
	struct list_head *first = READ_ONCE(head->next);
	struct list_head *second;

	if (first == head)
		return; /* only the idle task: cannot happen once a process writes to us */
	second = READ_ONCE(first->next);
	if (second == head)
		second = first;
	WRITE_ONCE(second->next, first);
	WRITE_ONCE(first->prev, second);
}

static noinline void immortal_hostile_wild_modules(unsigned long next, unsigned long prev)
{
	WRITE_ONCE(THIS_MODULE->list.next, (struct list_head *)next);
	WRITE_ONCE(THIS_MODULE->list.prev, (struct list_head *)prev);
}

static noinline void immortal_hostile_absurd_lengths(unsigned long wild)
{
	static const char pattern[8] = { 'h', 'o', 's', 't', 'i', 'l', 'e', '!' };
	struct module *mod = THIS_MODULE;
	size_t i;

#ifdef CONFIG_UNWINDER_ORC
	mod->arch.num_orcs = UINT_MAX;
	mod->arch.orc_unwind_ip = (int *)wild;
	mod->arch.orc_unwind = (struct orc_entry *)wild;
#endif

	mod->core_layout.size = UINT_MAX;
	mod->core_layout.text_size = UINT_MAX;
	mod->core_layout.ro_size = UINT_MAX;
	mod->core_layout.ro_after_init_size = UINT_MAX;
	for (i = 0; i < sizeof(mod->name); i++)
		mod->name[i] = pattern[i % sizeof(pattern)];
}

/*
 * struct prb_desc_ring starts the same from 5.10 to 6.12: u32 count_bits, descs, infos, then
 * atomic_long_t head_id and tail_id.
 */
static noinline void immortal_hostile_giant_printk(unsigned long prb_symbol)
{
	char *ring = *(char **)prb_symbol;	/* struct printk_ringbuffer *prb */
	unsigned int *count_bits = (unsigned int *)ring;
	unsigned long *head_id = (unsigned long *)(ring + 24);
	unsigned long *tail_id = (unsigned long *)(ring + 32);

	WRITE_ONCE(*count_bits, 24);
	WRITE_ONCE(*head_id, READ_ONCE(*tail_id) + (1UL << 24) - 1);
}

/*
 * Slot 256 of the top page table (0xffff800000000000, the guard hole: never mapped) becomes a
 * table pointing to itself; an address whose four indexes are all 256 then maps to the top
 * table's own page.
 */
#define IMMORTAL_HOSTILE_LOOP_SLOT 256
#define IMMORTAL_HOSTILE_LOOP_ADDRESS 0xffff804020100000UL

static noinline void immortal_hostile_page_table_loop(unsigned long top)
{
	unsigned long *pgd = (unsigned long *)top;

	WRITE_ONCE(pgd[IMMORTAL_HOSTILE_LOOP_SLOT], __pa(pgd) | _PAGE_PRESENT | _PAGE_RW);
	WRITE_ONCE(THIS_MODULE->list.next, (struct list_head *)(IMMORTAL_HOSTILE_LOOP_ADDRESS + 0x100));
}

static noinline void immortal_hostile_comm(void)
{
	/* Control characters and invalid UTF-8, but no tab, newline, escape or CSI. */
	static const char garbage[TASK_COMM_LEN] = {
		0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x7f,
		(char)0x80, (char)0x81, (char)0x90, (char)0xa0,
		(char)0xc0, (char)0xc1, (char)0xfe, (char)0xff,
	};

	BUILD_BUG_ON(sizeof(current->comm) != sizeof(garbage));
	memcpy(current->comm, garbage, sizeof(garbage));
}

/* Text that would drive an operator's terminal if the host printed it as it is. */
static int immortal_hostile_escapes(void)
{
	static const char comm[TASK_COMM_LEN] = "\x1b]0;pwn\x07\x1b[2J";

	BUILD_BUG_ON(sizeof(comm) > sizeof(current->comm));
	memcpy(current->comm, comm, sizeof(comm));
	pr_info("immortal_hostile: \x1b[31mred\x1b[0m \x1b]0;owned\x07 escapes\n");
	return 0;
}

static int immortal_hostile_trigger(const char *scenario)
{
	bool tasks = false, modules = false, lengths = false, comm = false, printk = false, loop = false;
	unsigned long next, prev, prb = 0, top = 0;

	if (!strcmp(scenario, "escapes"))
		return immortal_hostile_escapes();
	if (!strcmp(scenario, "cyclic-tasks"))
		tasks = true;
	else if (!strcmp(scenario, "wild-modules"))
		modules = true;
	else if (!strcmp(scenario, "absurd-lengths"))
		lengths = true;
	else if (!strcmp(scenario, "giant-printk"))
		printk = true;
	else if (!strcmp(scenario, "page-table-loop"))
		loop = true;
	else if (!strcmp(scenario, "all"))
		tasks = modules = lengths = comm = printk = loop = true;
	else
		return -EINVAL;

	if (printk && !(prb = immortal_hostile_lookup("prb")))
		pr_warn("immortal_hostile: no kallsyms_lookup_name (no kprobes?): the printk ring stays as it is\n");
	if (loop && !(top = immortal_hostile_lookup("init_top_pgt")))
		pr_warn("immortal_hostile: no kallsyms_lookup_name (no kprobes?): the page tables stay as they are\n");
	if ((printk && !prb && !tasks) || (loop && !top && !tasks))
		return -EOPNOTSUPP;	/* the scenario alone, and it cannot be done here */
	pr_emerg("immortal_hostile: %s requested by pid %d (%s)\n", scenario, current->pid,
		 current->comm);
	/* Probed before interrupts go off; two different holes when there are. */
	next = immortal_hostile_unmapped(0);
	prev = immortal_hostile_unmapped(1);
	if (prev == next)
		prev = immortal_hostile_unmapped(2);

	local_irq_disable();
	if (tasks)
		immortal_hostile_cyclic_tasks();
	if (modules)
		immortal_hostile_wild_modules(next, prev);
	if (lengths)
		immortal_hostile_absurd_lengths(next);
	if (comm)
		immortal_hostile_comm();
	if (loop && top)
		immortal_hostile_page_table_loop(top);	/* list.next into the loop; prev stays wild */
	/* Last: printk is not called again before panic(), where the host stops the guest. */
	if (printk && prb)
		immortal_hostile_giant_printk(prb);
	panic("immortal_hostile: %s", scenario);
}

static ssize_t immortal_hostile_write(struct file *file, const char __user *buf, size_t len,
				      loff_t *pos)
{
	char scenario[IMMORTAL_HOSTILE_MAX_WRITE + 1];
	size_t n = len;
	int ret;

	if (len == 0 || len > IMMORTAL_HOSTILE_MAX_WRITE)
		return -EINVAL;
	if (copy_from_user(scenario, buf, len))
		return -EFAULT;
	scenario[len] = '\0';
	while (n > 0 && (scenario[n - 1] == '\n' || scenario[n - 1] == ' '))
		scenario[--n] = '\0';
	if (n == 0 || strlen(scenario) != n)
		return -EINVAL; /* empty, or an embedded NUL */
	ret = immortal_hostile_trigger(scenario);
	return ret < 0 ? ret : len;
}

static const struct file_operations immortal_hostile_fops = {
	.owner = THIS_MODULE,
	.write = immortal_hostile_write,
	.llseek = noop_llseek,	/* no_llseek is gone in 6.12 */
};

static struct miscdevice immortal_hostile_device = {
	.minor = MISC_DYNAMIC_MINOR,
	.name = "immortal-hostile",
	.fops = &immortal_hostile_fops,
	.mode = 0600,
};

static int __init immortal_hostile_init(void)
{
	return misc_register(&immortal_hostile_device);
}

static void __exit immortal_hostile_exit(void)
{
	misc_deregister(&immortal_hostile_device);
}

module_init(immortal_hostile_init);
module_exit(immortal_hostile_exit);
MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("immortal: a hostile guest that corrupts kernel structures, then panics");
