// SPDX-License-Identifier: GPL-2.0
/*
 * immortal_fault: a deliberately faulty driver for reliability testing.
 *
 * It behaves like a small misc-device driver with state of its own (a spinlock, a mutex, a
 * list and a counter) and crashes the kernel, on request, in the ways faulty drivers do. A
 * user process writes a fault class name to /dev/immortal-fault; the fault then happens inside
 * this driver's own code (in the write handler, or in a timer or work item it arms), so the
 * oops names a function of this module and, in process context, a process to blame.
 *
 *   echo null-deref > /dev/immortal-fault     crash in process context
 *   echo ping > /dev/immortal-fault           no fault: takes the driver's locks, counts
 *   cat /dev/immortal-fault                   takes the driver's locks, prints its state
 *
 * Anything else written (unknown name, more than 64 bytes, an empty write) gets -EINVAL.
 * docs/fault-catalogue.md describes every class and what the stock kernel does with it.
 */
#include <linux/bug.h>
#include <linux/delay.h>
#include <linux/fs.h>
#include <linux/kernel.h>
#include <linux/list.h>
#include <linux/miscdevice.h>
#include <linux/mm.h>
#include <linux/module.h>
#include <linux/mutex.h>
#include <linux/sched.h>
#include <linux/slab.h>
#include <linux/spinlock.h>
#include <linux/string.h>
#include <linux/timer.h>
#include <linux/uaccess.h>
#include <linux/vmalloc.h>
#include <linux/workqueue.h>

#define IMMORTAL_FAULT_MAX_WRITE 64

static DEFINE_SPINLOCK(immortal_fault_lock);
static DEFINE_MUTEX(immortal_fault_mutex);
static LIST_HEAD(immortal_fault_items);
static unsigned long immortal_fault_counter;

struct immortal_fault_item {
	struct list_head node;
	unsigned long value;
};

/* Faults are in noinline functions named after their class, so the oops names them. */

static noinline void immortal_fault_null_deref(void)
{
	volatile int *p = NULL;

	*p = 0x1337;
}

static noinline void immortal_fault_bug(void)
{
	BUG();
}

static noinline void immortal_fault_panic(void)
{
	panic("immortal_fault: panic requested by pid %d (%s)", current->pid, current->comm);
}

static noinline void immortal_fault_gpf(void)
{
	/* A non-canonical address: #GP, not a page fault. */
	volatile unsigned long *p = (unsigned long *)0xdead000000000000UL;

	(void)*p;
}

/* volatile: a divisor the compiler knows is zero becomes ud2, not a divide error. */
static volatile int immortal_fault_zero;

static noinline int immortal_fault_divide(void)
{
	volatile int dividend = 42;

	return dividend / immortal_fault_zero;
}

static noinline void immortal_fault_spinlock_held(void)
{
	spin_lock(&immortal_fault_lock);
	immortal_fault_counter++;
	immortal_fault_null_deref();
	spin_unlock(&immortal_fault_lock);
}

static noinline void immortal_fault_mutex_held(void)
{
	mutex_lock(&immortal_fault_mutex);
	immortal_fault_counter++;
	immortal_fault_null_deref();
	mutex_unlock(&immortal_fault_mutex);
}

/* Softirq context: no process to blame. */
static struct timer_list immortal_fault_timer;

static noinline void immortal_fault_timer_fn(struct timer_list *t)
{
	immortal_fault_null_deref();
}

/* A kworker kernel thread runs it. */
static struct work_struct immortal_fault_work;

static noinline void immortal_fault_work_fn(struct work_struct *w)
{
	immortal_fault_null_deref();
}

static noinline void immortal_fault_softlockup(void)
{
	/*
	 * Spin with preemption disabled. The soft-lockup watchdog fires after 2 * watchdog_thresh
	 * seconds; give up after a bound so a kernel without softlockup_panic survives.
	 */
	unsigned long until = jiffies + 120 * HZ;

	preempt_disable();
	while (time_before(jiffies, until))
		cpu_relax();
	preempt_enable();
}

static noinline void immortal_fault_hung_task(void)
{
	/* Uninterruptible sleep (D state) past hung_task_timeout_secs; bounded as above. */
	msleep(600 * 1000);
}

static noinline void immortal_fault_warn(void)
{
	WARN(1, "immortal_fault: warning requested by pid %d", current->pid);
}

/* Far beyond any kernel stack: the guard page below the stack is hit long before. */
static volatile int immortal_fault_depth_limit = 1 << 30;

static noinline int immortal_fault_recurse(int depth)
{
	volatile char frame[256];

	if (depth > immortal_fault_depth_limit)
		return 0;
	frame[0] = (char)depth;
	/* The use after the call keeps the compiler from turning this into a loop. */
	return immortal_fault_recurse(depth + 1) + frame[0];
}

/* The function text-corruption overwrites, then calls. */
static noinline int immortal_fault_text_target(int x)
{
	return x * 3 + 1;
}

static noinline int immortal_fault_text_corruption(void)
{
	/* ud2; ud2: what a stray write of a buffer of 0x0b0f words over code does. */
	static const u8 garbage[] = { 0x0f, 0x0b, 0x0f, 0x0b };
	void *target = (void *)immortal_fault_text_target;
	unsigned long offset = offset_in_page(target);
	struct page *page;
	u8 *alias;

	/*
	 * Module text is read-only (STRICT_MODULE_RWX); a faulty driver that scribbles over code
	 * does so through another mapping of the same page. Do the same with a writable vmap.
	 */
	if (offset + sizeof(garbage) > PAGE_SIZE)
		return -EINVAL;
	page = vmalloc_to_page(target);
	if (!page)
		return -EFAULT;
	alias = vmap(&page, 1, VM_MAP, PAGE_KERNEL);
	if (!alias)
		return -ENOMEM;
	memcpy(alias + offset, garbage, sizeof(garbage));
	vunmap(alias);
	return immortal_fault_text_target(1);
}

static noinline void immortal_fault_list_corruption(void)
{
	struct immortal_fault_item *a = kmalloc(sizeof(*a), GFP_KERNEL);
	struct immortal_fault_item *b = kmalloc(sizeof(*b), GFP_KERNEL);

	if (!a || !b) {
		kfree(a);
		kfree(b);
		return;
	}
	spin_lock(&immortal_fault_lock);
	list_add(&a->node, &immortal_fault_items);
	list_add(&b->node, &immortal_fault_items);
	/* A stray write over a's links, then a list_del that CONFIG_DEBUG_LIST checks. */
	a->node.prev = (struct list_head *)0xdead4ead00000100UL;
	list_del(&b->node);
	list_del(&a->node);
	spin_unlock(&immortal_fault_lock);
	kfree(a);
	kfree(b);
}

static int immortal_fault_trigger(const char *cls)
{
	if (!strcmp(cls, "ping")) {
		mutex_lock(&immortal_fault_mutex);
		spin_lock(&immortal_fault_lock);
		immortal_fault_counter++;
		spin_unlock(&immortal_fault_lock);
		mutex_unlock(&immortal_fault_mutex);
		return 0;
	}
	pr_info("immortal_fault: %s requested by pid %d (%s)\n", cls, current->pid, current->comm);
	if (!strcmp(cls, "null-deref"))
		immortal_fault_null_deref();
	else if (!strcmp(cls, "bug"))
		immortal_fault_bug();
	else if (!strcmp(cls, "panic"))
		immortal_fault_panic();
	else if (!strcmp(cls, "gpf"))
		immortal_fault_gpf();
	else if (!strcmp(cls, "divide"))
		return immortal_fault_divide();
	else if (!strcmp(cls, "spinlock-held"))
		immortal_fault_spinlock_held();
	else if (!strcmp(cls, "mutex-held"))
		immortal_fault_mutex_held();
	else if (!strcmp(cls, "timer"))
		mod_timer(&immortal_fault_timer, jiffies + msecs_to_jiffies(10));
	else if (!strcmp(cls, "workqueue"))
		schedule_work(&immortal_fault_work);
	else if (!strcmp(cls, "softlockup"))
		immortal_fault_softlockup();
	else if (!strcmp(cls, "hung-task"))
		immortal_fault_hung_task();
	else if (!strcmp(cls, "warn"))
		immortal_fault_warn();
	else if (!strcmp(cls, "stack-overflow"))
		return immortal_fault_recurse(0);
	else if (!strcmp(cls, "text-corruption"))
		return immortal_fault_text_corruption();
	else if (!strcmp(cls, "list-corruption"))
		immortal_fault_list_corruption();
	else
		return -EINVAL;
	return 0;
}

static ssize_t immortal_fault_write(struct file *file, const char __user *buf, size_t len, loff_t *pos)
{
	char cls[IMMORTAL_FAULT_MAX_WRITE + 1];
	size_t n = len;
	int ret;

	if (len == 0 || len > IMMORTAL_FAULT_MAX_WRITE)
		return -EINVAL;
	if (copy_from_user(cls, buf, len))
		return -EFAULT;
	cls[len] = '\0';
	while (n > 0 && (cls[n - 1] == '\n' || cls[n - 1] == ' '))
		cls[--n] = '\0';
	if (n == 0 || strlen(cls) != n)
		return -EINVAL; /* empty, or an embedded NUL */
	ret = immortal_fault_trigger(cls);
	return ret < 0 ? ret : len;
}

static ssize_t immortal_fault_read(struct file *file, char __user *buf, size_t len, loff_t *pos)
{
	char text[128];
	unsigned long counter;
	int n;

	/* Takes both locks, as the driver's normal operations do: a leaked lock shows here. */
	mutex_lock(&immortal_fault_mutex);
	spin_lock(&immortal_fault_lock);
	counter = immortal_fault_counter;
	spin_unlock(&immortal_fault_lock);
	mutex_unlock(&immortal_fault_mutex);
	n = scnprintf(text, sizeof(text), "immortal_fault counter %lu\n", counter);
	return simple_read_from_buffer(buf, len, pos, text, n);
}

static const struct file_operations immortal_fault_fops = {
	.owner = THIS_MODULE,
	.write = immortal_fault_write,
	.read = immortal_fault_read,
	.llseek = noop_llseek,	/* no_llseek is gone in 6.12 */
};

static struct miscdevice immortal_fault_device = {
	.minor = MISC_DYNAMIC_MINOR,
	.name = "immortal-fault",
	.fops = &immortal_fault_fops,
	.mode = 0600,
};

/* insmod … fault_on_load=1: a NULL write in the init function itself (a driver that crashes
 * while it loads; its code is then in the module's init section). */
static bool fault_on_load;
module_param(fault_on_load, bool, 0);
MODULE_PARM_DESC(fault_on_load, "crash in module init (for recovery tests)");

static int __init immortal_fault_init(void)
{
	if (fault_on_load) {
		volatile int *p = NULL;

		*p = 0x1337;
	}
	timer_setup(&immortal_fault_timer, immortal_fault_timer_fn, 0);
	INIT_WORK(&immortal_fault_work, immortal_fault_work_fn);
	return misc_register(&immortal_fault_device);
}

static void __exit immortal_fault_exit(void)
{
	struct immortal_fault_item *item, *next;

	misc_deregister(&immortal_fault_device);
	del_timer_sync(&immortal_fault_timer);
	cancel_work_sync(&immortal_fault_work);
	list_for_each_entry_safe(item, next, &immortal_fault_items, node) {
		list_del(&item->node);
		kfree(item);
	}
}

module_init(immortal_fault_init);
module_exit(immortal_fault_exit);
MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("immortal: a deliberately faulty driver for reliability testing");
