// SPDX-License-Identifier: GPL-2.0
/*
 * immortal_realdev: a faulty driver written the way real drivers are, for recovery tests.
 *
 * Unlike immortal_fault (module-global state), everything here lives in a per-device structure
 * allocated at probe time with devm_kzalloc() — a mutex, a spinlock, an rw_semaphore, an rwlock
 * and a semaphore among its fields — and is reached through file->private_data (the misc
 * device), dev_get_drvdata() (a sysfs attribute) or netdev_priv() (a net device whose MTU
 * change runs under the kernel's rtnl_lock). Its bugs are the usual ones: a NULL member
 * dereferenced while a lock is held, sometimes after a sleep during which other users queue
 * on that lock.
 *
 *   echo mutex > /dev/immortal-realdev          crash holding the device's mutex
 *   echo 'mutex-wait 1500' > /dev/immortal-realdev   take it, sleep 1.5 s (others queue), crash
 *   cat /dev/immortal-realdev                   takes every lock, prints the device's state
 *   echo crash > /sys/devices/platform/immortal-realdev/trigger   crash in a sysfs store
 *   ip link set rdnet0 mtu 1234                 crash in ndo_change_mtu under rtnl_lock
 *   echo rx-mode > /dev/immortal-realdev; immortal-mcast-join 239.1.2.3 rdnet0
 *                                               crash in ndo_set_rx_mode under the joining
 *                                               socket's lock, rtnl_lock and the address list's
 *                                               spinlock (bottom halves off)
 *   echo crash > /sys/kernel/debug/immortal-realdev/trigger   crash behind debugfs's file proxy
 *
 * Commands (docs/fault-catalogue.md): mutex, mutex-wait MS, spin-irq, spin-bh, rwsem-write,
 * rwsem-write-wait MS, rwsem-read, rwlock-write, rwlock-read, nested, semaphore, slot (takes and
 * gives back the semaphore's unit, no crash), spin-elsewhere (a helper takes the spinlock and
 * returns; the caller crashes: the count says one spinlock that no frame took), kernel-fault,
 * mutex-elsewhere, ping, enqueue (queues and completes a work item; crashes only when one of its
 * allocations fails, as the kernel's fault injection makes them: failslab, fail_page_alloc, or
 * fail_function on realdev_new_item), and the crashes the kernel raises on the driver's behalf: list-corruption,
 * double-free, usercopy, fortify, stack-smash, call-null; and crashes outside the writer's own
 * call: kthread (the driver's own kernel thread), tasklet, rcu (an RCU callback), hrtimer (a
 * hard-interrupt hrtimer), timer-under-spin MS (the writer takes the device's spinlock and
 * busy-waits, with interrupts on, until a timer armed on its CPU has crashed under its own
 * spinlock, or MS ms, so the softirq's preemption count holds the interrupted writer's level
 * too), irq (the device's interrupt handler crashes holding the device's spinlock; the interrupt is a
 * descriptor of the kernel's IRQ core raised from a hard-interrupt hrtimer, since the test guest
 * has no spare device line: the handler is called by the core's own __handle_irq_event_percpu),
 * irq-thread (the same bug in a threaded handler, in its irq/N thread, holding the device's mutex).
 * Anything else gets -EINVAL.
 *
 * mutex-elsewhere takes a mutex that nothing on the crashing path points to (a helper took it and
 * returned; only a module global leads to it) and that nobody waits for yet: the case the lock
 * search cannot see, left to the supervisor's check of the recovered guest. Reading
 * /sys/kernel/debug/immortal-realdev/elsewhere takes that mutex.
 */
#include <linux/debugfs.h>
#include <linux/delay.h>
#include <linux/device.h>
#include <linux/error-injection.h>
#include <linux/etherdevice.h>
#include <linux/fs.h>
#include <linux/hrtimer.h>
#include <linux/interrupt.h>
#include <linux/irq.h>
#include <linux/kthread.h>
#include <linux/rcupdate.h>
#include <linux/kernel.h>
#include <linux/miscdevice.h>
#include <linux/module.h>
#include <linux/mutex.h>
#include <linux/netdevice.h>
#include <linux/platform_device.h>
#include <linux/rwsem.h>
#include <linux/semaphore.h>
#include <linux/list.h>
#include <linux/slab.h>
#include <linux/spinlock.h>
#include <linux/string.h>
#include <linux/uaccess.h>
#include <linux/version.h>

#define REALDEV_NAME "immortal-realdev"
#define REALDEV_MAX_WRITE 64
#define REALDEV_CRASH_MTU 1234

struct realdev_config {
	unsigned long generation;
	char label[16];
};

struct realdev {
	struct miscdevice misc;
	struct device *dev;
	struct mutex lock;		/* serialises commands, as most drivers do */
	spinlock_t slock;		/* protects the counters, also from interrupts */
	struct rw_semaphore cfg_rwsem;	/* protects cfg */
	rwlock_t stats_lock;
	struct semaphore slots;
	struct realdev_config *cfg;	/* NULL: the bug every command below trips over */
	const char *label;		/* NULL too */
	unsigned long ops;
	unsigned long irq_events;
	struct net_device *netdev;
	struct dentry *debugfs;
	struct list_head items;		/* protected by lock */
	void (*notify)(struct realdev *rd);	/* NULL: never set up */
	size_t small_size;
	struct tasklet_struct tasklet;
	struct hrtimer hrtimer;
	struct rcu_head rcu;
	struct timer_list timer;
	spinlock_t timer_lock;		/* the timer callback's own */
	bool timer_entered;		/* the timer callback has started (timer-under-spin waits for it) */
	int irq;			/* its interrupt (a descriptor of the IRQ core), or < 0 */
	int thread_irq;			/* one with a threaded handler, or < 0 */
	int raise;			/* the one irq_timer raises */
	struct hrtimer irq_timer;
	unsigned long hw_status;	/* a "device register" the driver polls; its ready bit never comes */
	wait_queue_head_t hw_wq;	/* woken when it does */
	bool crash_rx_mode;		/* "rx-mode": the next ndo_set_rx_mode() crashes */
};

struct realdev_item {
	struct list_head node;
	unsigned long value;
	void *data;		/* enqueue's buffer: REALDEV_ITEM_DATA bytes, from the page allocator */
};

/* Above the largest kmalloc cache: the buffer comes from the page allocator (order 2). */
#define REALDEV_ITEM_DATA (4 * PAGE_SIZE)

struct realdev_net {
	struct realdev *rd;
	struct napi_struct napi;	/* polled while the device is up */
};

static struct platform_device *realdev_pdev;

/* State of the driver reached only through this global (see mutex-elsewhere). */
struct realdev_elsewhere {
	struct mutex lock;
	unsigned long uses;
};
static struct realdev_elsewhere *realdev_elsewhere;

static noinline void realdev_take_elsewhere(void)
{
	mutex_lock(&realdev_elsewhere->lock);
	realdev_elsewhere->uses++;
}

/* Every crash is the same bug: a member that should have been set up at probe time. */
static noinline void realdev_apply_config(struct realdev *rd)
{
	rd->cfg->generation++;
}

static noinline int realdev_cmd_mutex(struct realdev *rd, unsigned int wait_ms)
{
	mutex_lock(&rd->lock);
	rd->ops++;
	if (wait_ms)
		msleep(wait_ms);
	realdev_apply_config(rd);
	mutex_unlock(&rd->lock);
	return 0;
}

static noinline int realdev_cmd_spin_irq(struct realdev *rd)
{
	unsigned long flags;

	spin_lock_irqsave(&rd->slock, flags);
	rd->irq_events++;
	realdev_apply_config(rd);
	spin_unlock_irqrestore(&rd->slock, flags);
	return 0;
}

static noinline int realdev_cmd_spin_bh(struct realdev *rd)
{
	spin_lock_bh(&rd->slock);
	rd->irq_events++;
	realdev_apply_config(rd);
	spin_unlock_bh(&rd->slock);
	return 0;
}

static noinline int realdev_cmd_rwsem_write(struct realdev *rd, unsigned int wait_ms)
{
	down_write(&rd->cfg_rwsem);
	if (wait_ms)
		msleep(wait_ms);
	realdev_apply_config(rd);
	up_write(&rd->cfg_rwsem);
	return 0;
}

static noinline int realdev_cmd_rwsem_read(struct realdev *rd)
{
	unsigned long generation;

	down_read(&rd->cfg_rwsem);
	generation = rd->cfg->generation;
	up_read(&rd->cfg_rwsem);
	return generation ? 0 : -EAGAIN;
}

static noinline int realdev_cmd_rwlock(struct realdev *rd, bool write)
{
	if (write) {
		write_lock(&rd->stats_lock);
		realdev_apply_config(rd);
		write_unlock(&rd->stats_lock);
	} else {
		read_lock(&rd->stats_lock);
		realdev_apply_config(rd);
		read_unlock(&rd->stats_lock);
	}
	return 0;
}

static noinline int realdev_cmd_nested(struct realdev *rd)
{
	unsigned long flags;

	mutex_lock(&rd->lock);
	down_read(&rd->cfg_rwsem);
	spin_lock_irqsave(&rd->slock, flags);
	rd->ops++;
	realdev_apply_config(rd);
	spin_unlock_irqrestore(&rd->slock, flags);
	up_read(&rd->cfg_rwsem);
	mutex_unlock(&rd->lock);
	return 0;
}

static noinline int realdev_cmd_semaphore(struct realdev *rd)
{
	if (down_interruptible(&rd->slots))
		return -EINTR;
	realdev_apply_config(rd);
	up(&rd->slots);
	return 0;
}

static noinline int realdev_cmd_slot(struct realdev *rd)
{
	if (down_interruptible(&rd->slots))
		return -EINTR;
	up(&rd->slots);
	return 0;
}

/* Takes the device's spinlock and returns holding it (the caller unlocks). */
static noinline void realdev_lock_counters(struct realdev *rd) __acquires(&rd->slock)
{
	spin_lock(&rd->slock);
}

static noinline int realdev_cmd_spin_elsewhere(struct realdev *rd)
{
	realdev_lock_counters(rd);
	realdev_apply_config(rd);
	spin_unlock(&rd->slock);
	return 0;
}

/*
 * A work item and its buffer; an error pointer when either allocation fails, as its contract
 * says. Listed for fail_function, and its two allocations are what failslab (the item) and
 * fail_page_alloc (the buffer) make fail.
 */
static noinline struct realdev_item *realdev_new_item(struct realdev *rd)
{
	struct realdev_item *item = kmalloc(sizeof(*item), GFP_KERNEL);

	if (!item)
		return ERR_PTR(-ENOMEM);
	item->data = kmalloc(REALDEV_ITEM_DATA, GFP_KERNEL);
	if (!item->data) {
		kfree(item);
		return ERR_PTR(-ENOMEM);
	}
	item->value = rd->ops;
	return item;
}
ALLOW_ERROR_INJECTION(realdev_new_item, ERRNO);

/*
 * The bug only a failed allocation shows, the kind the kernel's fault-injection framework exists
 * to find: the caller checks for NULL, not for an error pointer, and reads the buffer's address
 * through the error pointer holding the device's mutex (before the item is queued: a crash in
 * list_add_tail() would leave the queue's head pointing at the error pointer, and every later
 * enqueue would crash on that instead). Without a failure it queues and completes one item.
 */
static noinline int realdev_cmd_enqueue(struct realdev *rd)
{
	struct realdev_item *item;

	mutex_lock(&rd->lock);
	item = realdev_new_item(rd);
	if (!item) {
		mutex_unlock(&rd->lock);
		return -ENOMEM;
	}
	memset(item->data, 0, REALDEV_ITEM_DATA);
	list_add_tail(&item->node, &rd->items);
	rd->ops++;
	list_del(&item->node);
	mutex_unlock(&rd->lock);
	kfree(item->data);
	kfree(item);
	return 0;
}

/* The driver hands the kernel a bad pointer: the fault is in the kernel's strlen(). */
static noinline int realdev_cmd_kernel_fault(struct realdev *rd)
{
	size_t n;

	mutex_lock(&rd->lock);
	n = strlen(rd->label);
	mutex_unlock(&rd->lock);
	return n ? 0 : -EINVAL;
}

/*
 * Bugs the kernel itself stops on the driver's behalf, before any damage: list debugging, SLUB's
 * double-free check, hardened usercopy, FORTIFY_SOURCE, the stack protector, NX.
 */
static noinline int realdev_cmd_list_corruption(struct realdev *rd)
{
	struct realdev_item *a = kzalloc(sizeof(*a), GFP_KERNEL), *b = kzalloc(sizeof(*b), GFP_KERNEL);

	if (!a || !b) {
		kfree(a);
		kfree(b);
		return -ENOMEM;
	}
	mutex_lock(&rd->lock);
	list_add(&a->node, &rd->items);
	list_add(&b->node, &rd->items);
	a->node.prev = (struct list_head *)0xdead4ead00000100UL;	/* a stray write */
	list_del(&b->node);
	list_del(&a->node);
	mutex_unlock(&rd->lock);
	kfree(a);
	kfree(b);
	return 0;
}

static noinline int realdev_cmd_double_free(struct realdev *rd)
{
	struct realdev_item *item = kmalloc(sizeof(*item), GFP_KERNEL);

	if (!item)
		return -ENOMEM;
	mutex_lock(&rd->lock);
	kfree(item);
	kfree(item);	/* the bug: freed twice */
	mutex_unlock(&rd->lock);
	return 0;
}

static noinline int realdev_cmd_usercopy(struct realdev *rd, char __user *to)
{
	/* Sizes the compiler cannot know: hardened usercopy, not the compile-time check, stops it. */
	char *small = kmalloc(READ_ONCE(rd->small_size), GFP_KERNEL);
	size_t len = READ_ONCE(rd->small_size) + 4096;
	int ret;

	if (!small)
		return -ENOMEM;
	ret = copy_to_user(to, small, len) ? -EFAULT : 0;	/* far past the 16 bytes */
	kfree(small);
	return ret;
}

static noinline int realdev_cmd_fortify(struct realdev *rd, const char *name)
{
	char label[8];

	strcpy(label, name);	/* name is longer than label: FORTIFY_SOURCE stops it */
	return label[0];
}

static noinline int realdev_cmd_stack_smash(struct realdev *rd)
{
	char buf[16] = "";
	char *volatile p = buf;

	memset(p, 'A', 64);	/* over the canary and the return address */
	return p[0];
}

static noinline int realdev_cmd_call_null(struct realdev *rd)
{
	void (*volatile notify)(struct realdev *) = rd->notify;

	notify(rd);	/* NULL: the CPU refuses to fetch an instruction there */
	return 0;
}

/* The same bug outside a system call: in the driver's kernel thread and its callbacks. */
static int realdev_thread(void *data)
{
	struct realdev *rd = data;

	mutex_lock(&rd->lock);
	realdev_apply_config(rd);
	mutex_unlock(&rd->lock);
	return 0;
}

static void realdev_tasklet(struct tasklet_struct *t)
{
	struct realdev *rd = from_tasklet(rd, t, tasklet);

	spin_lock(&rd->slock);
	rd->irq_events++;
	realdev_apply_config(rd);
	spin_unlock(&rd->slock);
}

static void realdev_rcu(struct rcu_head *head)
{
	realdev_apply_config(container_of(head, struct realdev, rcu));
}

static enum hrtimer_restart realdev_hrtimer(struct hrtimer *timer)
{
	struct realdev *rd = container_of(timer, struct realdev, hrtimer);

	rd->irq_events++;
	realdev_apply_config(rd);
	return HRTIMER_NORESTART;
}

static void realdev_timer(struct timer_list *t)
{
	struct realdev *rd = from_timer(rd, t, timer);

	WRITE_ONCE(rd->timer_entered, true);
	spin_lock(&rd->timer_lock);
	rd->irq_events++;
	realdev_apply_config(rd);
	spin_unlock(&rd->timer_lock);
}

/* The device's interrupt handler: counts the event under the device's spinlock. */
static irqreturn_t realdev_irq(int irq, void *data)
{
	struct realdev *rd = data;

	spin_lock(&rd->slock);
	rd->irq_events++;
	realdev_apply_config(rd);
	spin_unlock(&rd->slock);
	return IRQ_HANDLED;
}

/* A threaded handler: its primary handler only wakes the thread, which may sleep. */
static irqreturn_t realdev_irq_primary(int irq, void *data)
{
	return IRQ_WAKE_THREAD;
}

static irqreturn_t realdev_irq_thread(int irq, void *data)
{
	struct realdev *rd = data;

	mutex_lock(&rd->lock);
	rd->irq_events++;
	realdev_apply_config(rd);
	mutex_unlock(&rd->lock);
	return IRQ_HANDLED;
}

static enum hrtimer_restart realdev_irq_timer(struct hrtimer *timer)
{
	struct realdev *rd = container_of(timer, struct realdev, irq_timer);

	generic_handle_irq_safe(rd->raise);
	return HRTIMER_NORESTART;
}

/* Raises one of the device's interrupts in 10 ms, from a hard-interrupt hrtimer. */
static int realdev_raise_irq(struct realdev *rd, int irq)
{
	if (irq < 0)
		return -ENODEV;
	rd->raise = irq;
	hrtimer_start(&rd->irq_timer, ms_to_ktime(10), HRTIMER_MODE_REL_HARD);
	return 0;
}

/*
 * Holds the device's spinlock, busy, until its timer has fired on this CPU (at most MS ms).
 * It waits for the timer itself, not a fixed time: on a starved host a guest's clock can run
 * past a fixed delay before the tick that runs the timer is delivered.
 */
static noinline int realdev_cmd_timer_under_spin(struct realdev *rd, unsigned int ms)
{
	unsigned int waited;

	WRITE_ONCE(rd->timer_entered, false);
	spin_lock(&rd->slock);
	mod_timer(&rd->timer, jiffies + 2);	/* TIMER_PINNED: this CPU, which cannot be left now */
	for (waited = 0; waited < ms && !READ_ONCE(rd->timer_entered); waited++)
		mdelay(1);
	rd->ops++;
	spin_unlock(&rd->slock);
	return 0;
}

/*
 * A soft lockup: the driver polls for a ready bit that never comes, busy-waiting with udelay()
 * under its spinlock (preemption off) and its mutex. Bounded, so that a kernel without
 * softlockup_panic survives it.
 */
#define REALDEV_READY 0x1
static noinline int realdev_cmd_spin_poll(struct realdev *rd)
{
	unsigned long until = jiffies + 120 * HZ;
	int ret = -ETIMEDOUT;

	mutex_lock(&rd->lock);
	spin_lock(&rd->slock);
	while (time_before(jiffies, until)) {
		if (READ_ONCE(rd->hw_status) & REALDEV_READY) {
			ret = 0;
			break;
		}
		udelay(50);
	}
	rd->ops++;
	spin_unlock(&rd->slock);
	mutex_unlock(&rd->lock);
	return ret;
}

/*
 * A hung task: the driver waits, holding its mutex, for the device's ready event, which never
 * comes (uninterruptible: D state, a wait-queue entry and a timer on its stack). Bounded to
 * 10 minutes so that a kernel without hung_task_panic gets its task back some day.
 */
static noinline int realdev_cmd_hang(struct realdev *rd)
{
	long left;

	mutex_lock(&rd->lock);
	left = wait_event_timeout(rd->hw_wq, READ_ONCE(rd->hw_status) & REALDEV_READY, 600 * HZ);
	rd->ops++;
	mutex_unlock(&rd->lock);
	return left ? 0 : -ETIMEDOUT;
}

static int realdev_cmd_napi(struct realdev *rd);

static int realdev_command(struct realdev *rd, const char *cmd)
{
	unsigned int ms = 0;

	if (!strcmp(cmd, "ping")) {
		mutex_lock(&rd->lock);
		rd->ops++;
		mutex_unlock(&rd->lock);
		return 0;
	}
	/* Quiet too: fault-injection campaigns run it in loops until an allocation fails. */
	if (!strcmp(cmd, "enqueue"))
		return realdev_cmd_enqueue(rd);
	dev_info(rd->dev, "%s requested by pid %d (%s)\n", cmd, current->pid, current->comm);
	if (!strcmp(cmd, "mutex"))
		return realdev_cmd_mutex(rd, 0);
	if (sscanf(cmd, "mutex-wait %u", &ms) == 1)
		return realdev_cmd_mutex(rd, min(ms, 10000u));
	if (!strcmp(cmd, "spin-irq"))
		return realdev_cmd_spin_irq(rd);
	if (!strcmp(cmd, "spin-bh"))
		return realdev_cmd_spin_bh(rd);
	if (!strcmp(cmd, "rwsem-write"))
		return realdev_cmd_rwsem_write(rd, 0);
	if (sscanf(cmd, "rwsem-write-wait %u", &ms) == 1)
		return realdev_cmd_rwsem_write(rd, min(ms, 10000u));
	if (!strcmp(cmd, "rwsem-read"))
		return realdev_cmd_rwsem_read(rd);
	if (!strcmp(cmd, "rwlock-write"))
		return realdev_cmd_rwlock(rd, true);
	if (!strcmp(cmd, "rwlock-read"))
		return realdev_cmd_rwlock(rd, false);
	if (!strcmp(cmd, "nested"))
		return realdev_cmd_nested(rd);
	if (!strcmp(cmd, "slot"))
		return realdev_cmd_slot(rd);
	if (!strcmp(cmd, "spin-elsewhere"))
		return realdev_cmd_spin_elsewhere(rd);
	if (!strcmp(cmd, "semaphore"))
		return realdev_cmd_semaphore(rd);
	if (!strcmp(cmd, "kernel-fault"))
		return realdev_cmd_kernel_fault(rd);
	if (!strcmp(cmd, "kthread"))
		return PTR_ERR_OR_ZERO(kthread_run(realdev_thread, rd, "realdev-thread"));
	if (!strcmp(cmd, "tasklet")) {
		tasklet_schedule(&rd->tasklet);
		return 0;
	}
	if (!strcmp(cmd, "rcu")) {
		call_rcu(&rd->rcu, realdev_rcu);
		return 0;
	}
	if (!strcmp(cmd, "hrtimer")) {
		hrtimer_start(&rd->hrtimer, ms_to_ktime(10), HRTIMER_MODE_REL_HARD);
		return 0;
	}
	if (!strcmp(cmd, "irq"))
		return realdev_raise_irq(rd, rd->irq);
	if (!strcmp(cmd, "irq-thread"))
		return realdev_raise_irq(rd, rd->thread_irq);
	if (sscanf(cmd, "timer-under-spin %u", &ms) == 1)
		return realdev_cmd_timer_under_spin(rd, clamp(ms, 20u, 2000u));
	if (!strcmp(cmd, "hang"))
		return realdev_cmd_hang(rd);
	if (!strcmp(cmd, "napi"))
		return realdev_cmd_napi(rd);
	if (!strcmp(cmd, "rx-mode")) {
		WRITE_ONCE(rd->crash_rx_mode, true);	/* the next ndo_set_rx_mode() trips */
		return 0;
	}
	if (!strcmp(cmd, "spin-poll"))
		return realdev_cmd_spin_poll(rd);
	if (!strcmp(cmd, "list-corruption"))
		return realdev_cmd_list_corruption(rd);
	if (!strcmp(cmd, "double-free"))
		return realdev_cmd_double_free(rd);
	if (!strcmp(cmd, "fortify"))
		return realdev_cmd_fortify(rd, rd->misc.name);	/* "immortal-realdev": 17 bytes */
	if (!strcmp(cmd, "stack-smash"))
		return realdev_cmd_stack_smash(rd);
	if (!strcmp(cmd, "call-null"))
		return realdev_cmd_call_null(rd);
	if (!strcmp(cmd, "mutex-elsewhere")) {
		realdev_take_elsewhere();
		/* A sleep: whatever register still pointed at the mutex is someone else's now. */
		usleep_range(100, 200);
		realdev_apply_config(rd);
		mutex_unlock(&realdev_elsewhere->lock);
		return 0;
	}
	return -EINVAL;
}

/* Copies a command from user space, without trailing newlines or spaces. */
static int realdev_copy_command(char *cmd, const char __user *buf, size_t len)
{
	size_t n = len;

	if (len == 0 || len > REALDEV_MAX_WRITE)
		return -EINVAL;
	if (copy_from_user(cmd, buf, len))
		return -EFAULT;
	cmd[len] = '\0';
	while (n > 0 && (cmd[n - 1] == '\n' || cmd[n - 1] == ' '))
		cmd[--n] = '\0';
	return n && strlen(cmd) == n ? 0 : -EINVAL;
}

static ssize_t realdev_write(struct file *file, const char __user *buf, size_t len, loff_t *pos)
{
	struct realdev *rd = container_of(file->private_data, struct realdev, misc);
	char cmd[REALDEV_MAX_WRITE + 1];
	int ret = realdev_copy_command(cmd, buf, len);

	if (!ret && !strcmp(cmd, "usercopy"))
		ret = realdev_cmd_usercopy(rd, (char __user *)buf);
	else if (!ret)
		ret = realdev_command(rd, cmd);
	return ret < 0 ? ret : len;
}

/* Takes every lock the commands take: a lock left held by a crash shows as a hang here. */
static ssize_t realdev_read(struct file *file, char __user *buf, size_t len, loff_t *pos)
{
	struct realdev *rd = container_of(file->private_data, struct realdev, misc);
	unsigned long flags, ops, events;
	char text[96];
	int n;

	if (mutex_lock_interruptible(&rd->lock))
		return -EINTR;
	down_read(&rd->cfg_rwsem);
	read_lock(&rd->stats_lock);
	spin_lock_irqsave(&rd->slock, flags);
	ops = rd->ops;
	events = rd->irq_events;
	spin_unlock_irqrestore(&rd->slock, flags);
	read_unlock(&rd->stats_lock);
	up_read(&rd->cfg_rwsem);
	mutex_unlock(&rd->lock);
	n = scnprintf(text, sizeof(text), "realdev ops %lu events %lu\n", ops, events);
	return simple_read_from_buffer(buf, len, pos, text, n);
}

static const struct file_operations realdev_fops = {
	.owner = THIS_MODULE,
	.write = realdev_write,
	.read = realdev_read,
	.llseek = noop_llseek,	/* no_llseek is gone in 6.12 */
};

/* A sysfs attribute: the kernel calls store() holding the open file's kernfs mutex. */
static ssize_t trigger_store(struct device *dev, struct device_attribute *attr, const char *buf, size_t count)
{
	struct realdev *rd = dev_get_drvdata(dev);

	if (sysfs_streq(buf, "crash"))
		realdev_apply_config(rd);
	else if (!sysfs_streq(buf, "ping"))
		return -EINVAL;
	return count;
}

static ssize_t trigger_show(struct device *dev, struct device_attribute *attr, char *buf)
{
	struct realdev *rd = dev_get_drvdata(dev);
	unsigned long ops;

	mutex_lock(&rd->lock);
	ops = rd->ops;
	mutex_unlock(&rd->lock);
	return sysfs_emit(buf, "%lu\n", ops);
}
static DEVICE_ATTR_RW(trigger);

/* A debugfs file: debugfs's proxy holds a reference on the file around our write(). */
static ssize_t realdev_debugfs_write(struct file *file, const char __user *buf, size_t len, loff_t *pos)
{
	struct realdev *rd = file->private_data;
	char cmd[REALDEV_MAX_WRITE + 1];
	int ret = realdev_copy_command(cmd, buf, len);

	if (ret)
		return ret;
	if (!strcmp(cmd, "crash"))
		realdev_apply_config(rd);
	else if (strcmp(cmd, "ping"))
		return -EINVAL;
	return len;
}

static ssize_t realdev_elsewhere_read(struct file *file, char __user *buf, size_t len, loff_t *pos)
{
	char text[32];
	int n;

	mutex_lock(&realdev_elsewhere->lock);
	n = scnprintf(text, sizeof(text), "uses %lu\n", realdev_elsewhere->uses);
	mutex_unlock(&realdev_elsewhere->lock);
	return simple_read_from_buffer(buf, len, pos, text, n);
}

static const struct file_operations realdev_elsewhere_fops = {
	.owner = THIS_MODULE,
	.read = realdev_elsewhere_read,
	.llseek = noop_llseek,	/* no_llseek is gone in 6.12 */
};

static const struct file_operations realdev_debugfs_fops = {
	.owner = THIS_MODULE,
	.open = simple_open,
	.write = realdev_debugfs_write,
	.llseek = noop_llseek,	/* no_llseek is gone in 6.12 */
};

/* A net device: the kernel calls ndo_change_mtu() under rtnl_lock(). */
static int realdev_change_mtu(struct net_device *ndev, int new_mtu)
{
	struct realdev_net *priv = netdev_priv(ndev);

	if (new_mtu == REALDEV_CRASH_MTU)
		realdev_apply_config(priv->rd);
	ndev->mtu = new_mtu;
	return 0;
}

/*
 * The receive filter: the kernel calls it whenever the device's address lists change (a
 * multicast group joined through a socket option: under that socket's lock, rtnl_lock and the
 * address list's spinlock, with bottom halves off). Armed, it trips over the missing config.
 */
static void realdev_set_rx_mode(struct net_device *ndev)
{
	struct realdev_net *priv = netdev_priv(ndev);
	struct realdev *rd = priv->rd;

	if (READ_ONCE(rd->crash_rx_mode))
		rd->irq_events += rd->cfg->generation;	/* the filter's config: NULL */
}

/* The NAPI poll: it takes the device's spinlock and trips over the missing config. */
static int realdev_poll(struct napi_struct *napi, int budget)
{
	struct realdev_net *priv = container_of(napi, struct realdev_net, napi);
	struct realdev *rd = priv->rd;
	int done = 0;

	spin_lock(&rd->slock);
	done = rd->cfg->generation & 1;
	rd->irq_events++;
	spin_unlock(&rd->slock);
	if (done < budget)
		napi_complete_done(napi, done);
	return done;
}

static int realdev_open(struct net_device *ndev)
{
	struct realdev_net *priv = netdev_priv(ndev);

	napi_enable(&priv->napi);
	netif_start_queue(ndev);
	return 0;
}

static int realdev_stop(struct net_device *ndev)
{
	struct realdev_net *priv = netdev_priv(ndev);

	netif_stop_queue(ndev);
	napi_disable(&priv->napi);	/* waits for a scheduled poll to complete: for ever if it never does */
	return 0;
}

/* What the device's receive interrupt would do: schedule the poll (run as NET_RX softirq). */
static int realdev_cmd_napi(struct realdev *rd)
{
	struct realdev_net *priv = netdev_priv(rd->netdev);

	if (!netif_running(rd->netdev))
		return -ENETDOWN;
	local_bh_disable();
	napi_schedule(&priv->napi);
	local_bh_enable();
	return 0;
}

static netdev_tx_t realdev_start_xmit(struct sk_buff *skb, struct net_device *ndev)
{
	ndev->stats.tx_dropped++;
	dev_kfree_skb(skb);
	return NETDEV_TX_OK;
}

static const struct net_device_ops realdev_netdev_ops = {
	.ndo_open = realdev_open,
	.ndo_stop = realdev_stop,
	.ndo_start_xmit = realdev_start_xmit,
	.ndo_change_mtu = realdev_change_mtu,
	.ndo_set_rx_mode = realdev_set_rx_mode,
};

static void realdev_netdev_free(void *data)
{
	struct net_device *ndev = data;

	unregister_netdev(ndev);
	free_netdev(ndev);
}

/* An interrupt line of our own: a descriptor of the IRQ core with a chip that needs no hardware. */
static int realdev_setup_irq(struct realdev *rd, irq_handler_t handler, irq_handler_t thread_fn)
{
	/* Owned by no module: a descriptor owned by us would hold our refcount while requested,
	 * and the module could never be unloaded (remove() frees it). */
	int irq = __irq_alloc_descs(-1, 0, 1, NUMA_NO_NODE, NULL, NULL);

	if (irq < 0)
		return irq;
	irq_set_chip_and_handler(irq, &dummy_irq_chip, handle_simple_irq);
	irq_clear_status_flags(irq, IRQ_NOREQUEST);
	if (request_threaded_irq(irq, handler, thread_fn, thread_fn ? IRQF_ONESHOT : 0, REALDEV_NAME, rd)) {
		irq_free_desc(irq);
		return -ENODEV;
	}
	return irq;
}

static void realdev_free_irq(struct realdev *rd, int irq)
{
	if (irq >= 0) {
		free_irq(irq, rd);
		irq_free_desc(irq);
	}
}

static int realdev_probe(struct platform_device *pdev)
{
	struct realdev *rd;
	struct realdev_net *priv;
	struct net_device *ndev;
	int ret;

	rd = devm_kzalloc(&pdev->dev, sizeof(*rd), GFP_KERNEL);
	if (!rd)
		return -ENOMEM;
	rd->dev = &pdev->dev;
	mutex_init(&rd->lock);
	spin_lock_init(&rd->slock);
	init_waitqueue_head(&rd->hw_wq);
	init_rwsem(&rd->cfg_rwsem);
	rwlock_init(&rd->stats_lock);
	sema_init(&rd->slots, 1);
	INIT_LIST_HEAD(&rd->items);
	rd->small_size = 16;
	tasklet_setup(&rd->tasklet, realdev_tasklet);
	hrtimer_init(&rd->hrtimer, CLOCK_MONOTONIC, HRTIMER_MODE_REL_HARD);
	rd->hrtimer.function = realdev_hrtimer;
	spin_lock_init(&rd->timer_lock);
	timer_setup(&rd->timer, realdev_timer, TIMER_PINNED);
	hrtimer_init(&rd->irq_timer, CLOCK_MONOTONIC, HRTIMER_MODE_REL_HARD);
	rd->irq_timer.function = realdev_irq_timer;
	rd->irq = realdev_setup_irq(rd, realdev_irq, NULL);
	rd->thread_irq = realdev_setup_irq(rd, realdev_irq_primary, realdev_irq_thread);
	platform_set_drvdata(pdev, rd);

	rd->misc.minor = MISC_DYNAMIC_MINOR;
	rd->misc.name = REALDEV_NAME;
	rd->misc.fops = &realdev_fops;
	rd->misc.mode = 0600;
	rd->misc.parent = &pdev->dev;
	ret = misc_register(&rd->misc);
	if (ret)
		goto err_irq;

	ndev = alloc_netdev(sizeof(*priv), "rdnet%d", NET_NAME_ENUM, ether_setup);
	if (!ndev) {
		ret = -ENOMEM;
		goto err_misc;
	}
	priv = netdev_priv(ndev);
	priv->rd = rd;
	netif_napi_add(ndev, &priv->napi, realdev_poll);
	ndev->netdev_ops = &realdev_netdev_ops;
	ndev->min_mtu = 68;
	ndev->max_mtu = 9000;
	eth_hw_addr_random(ndev);
	SET_NETDEV_DEV(ndev, &pdev->dev);
	ret = register_netdev(ndev);
	if (ret) {
		free_netdev(ndev);
		goto err_misc;
	}
	rd->netdev = ndev;
	ret = devm_add_action_or_reset(&pdev->dev, realdev_netdev_free, ndev);
	if (ret)
		goto err_misc;
	ret = device_create_file(&pdev->dev, &dev_attr_trigger);
	if (ret)
		goto err_misc;
	rd->debugfs = debugfs_create_dir(REALDEV_NAME, NULL);
	debugfs_create_file("trigger", 0600, rd->debugfs, rd, &realdev_debugfs_fops);
	debugfs_create_file("elsewhere", 0400, rd->debugfs, NULL, &realdev_elsewhere_fops);
	return 0;

err_misc:
	misc_deregister(&rd->misc);
err_irq:
	realdev_free_irq(rd, rd->irq);
	realdev_free_irq(rd, rd->thread_irq);
	return ret;
}

/* Linux 6.11 made a platform driver's remove() return nothing. */
#if LINUX_VERSION_CODE >= KERNEL_VERSION(6, 11, 0)
#define REALDEV_REMOVE_RETURNS void
#define REALDEV_REMOVE_DONE return
#else
#define REALDEV_REMOVE_RETURNS int
#define REALDEV_REMOVE_DONE return 0
#endif
static REALDEV_REMOVE_RETURNS realdev_remove(struct platform_device *pdev)
{
	struct realdev *rd = platform_get_drvdata(pdev);

	debugfs_remove(rd->debugfs);
	device_remove_file(&pdev->dev, &dev_attr_trigger);
	hrtimer_cancel(&rd->hrtimer);
	del_timer_sync(&rd->timer);
	hrtimer_cancel(&rd->irq_timer);
	realdev_free_irq(rd, rd->irq);
	realdev_free_irq(rd, rd->thread_irq);
	tasklet_kill(&rd->tasklet);
	rcu_barrier();	/* no callback of ours may run after the devm state is freed */
	misc_deregister(&rd->misc);
	REALDEV_REMOVE_DONE;
}

static struct platform_driver realdev_driver = {
	.probe = realdev_probe,
	.remove = realdev_remove,
	.driver = { .name = REALDEV_NAME },
};

static int __init realdev_init(void)
{
	int ret;

	realdev_elsewhere = kzalloc(sizeof(*realdev_elsewhere), GFP_KERNEL);
	if (!realdev_elsewhere)
		return -ENOMEM;
	mutex_init(&realdev_elsewhere->lock);
	ret = platform_driver_register(&realdev_driver);
	if (ret) {
		kfree(realdev_elsewhere);
		return ret;
	}
	realdev_pdev = platform_device_register_simple(REALDEV_NAME, -1, NULL, 0);
	if (IS_ERR(realdev_pdev)) {
		platform_driver_unregister(&realdev_driver);
		kfree(realdev_elsewhere);
		return PTR_ERR(realdev_pdev);
	}
	return 0;
}

static void __exit realdev_exit(void)
{
	platform_device_unregister(realdev_pdev);
	platform_driver_unregister(&realdev_driver);
	kfree(realdev_elsewhere);
}

module_init(realdev_init);
module_exit(realdev_exit);
MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("immortal: a faulty driver shaped like real ones (per-device state, kernel-held locks)");
