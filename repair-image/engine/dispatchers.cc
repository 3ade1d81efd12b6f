#include "engine/dispatchers.h"

namespace immortal::repair {

namespace {

// kernel/time/timer.c, kernel/workqueue.c, kernel/softirq.c, kernel/rcu/tree.c, net/core/dev.c,
// kernel/time/hrtimer.c (__run_hrtimer inlined into __hrtimer_run_queues, where hard-interrupt
// hrtimers run with interrupts off), kernel/irq/handle.c and manage.c.
constexpr Dispatcher kDispatchers[] = {
    {"call_timer_fn", "timer callback", true, false, ReturnType::none, 0},
    {"process_one_work", "work item", true, false, ReturnType::none, 0},
    {"tasklet_action_common", "tasklet", true, false, ReturnType::none, 0},
    {"rcu_do_batch", "RCU callback", true, false, ReturnType::none, 0},
    // enum hrtimer_restart: anything but HRTIMER_NORESTART (0) would re-arm it at once.
    {"__hrtimer_run_queues", "hrtimer callback", false, true, ReturnType::enumeration, 0},
    // Every action of the interrupt's descriptor, interrupts off. The call that crashed ends as
    // IRQ_HANDLED (the interrupt was taken; the core goes on to the line's other handlers and
    // its flow handler's end of interrupt); quarantined, the handler returns IRQ_NONE, and a
    // line that keeps firing unanswered is disabled by the kernel's own note_interrupt()
    // ("nobody cared").
    {"__handle_irq_event_percpu", "interrupt handler", false, true, ReturnType::irqreturn, 1},
    // A threaded handler in its irq/N thread; IRQ_HANDLED, then irq_finalize_oneshot() unmasks
    // a oneshot line.
    {"irq_thread_fn", "threaded interrupt handler", true, false, ReturnType::irqreturn, 1},
    // A handler forced into its thread (the threadirqs boot option): irq_forced_thread_fn()
    // runs it with bottom halves and interrupts disabled, and enables both itself once it
    // returns — so the ended call returns to it with interrupts still off.
    {"irq_forced_thread_fn", "forced-threaded interrupt handler", false, false, ReturnType::irqreturn, 1},
    // net/core/dev.c: a driver's NAPI poll, from net_rx_action (NET_RX softirq) or a threaded
    // NAPI's kthread. Ended as having done no work, after napi_complete_done(napi, 0) took the
    // instance off the schedule (the driver would have): else it stays scheduled for ever and
    // napi_disable() — at ifdown, at removal — waits for ever. Quarantined, it does the same.
    {"__napi_poll", "NAPI poll", true, false, ReturnType::signed_integer, 0},
};

}  // namespace

const Dispatcher* dispatcher_named(const std::string& caller) {
  std::string name = base_function_name(caller);
  for (const auto& d : kDispatchers)
    if (name == d.function) return &d;
  return nullptr;
}

}  // namespace immortal::repair
