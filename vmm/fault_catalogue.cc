#include "fault_catalogue.h"

#include <optional>
#include <string>

namespace immortal::vmm {

// Console signatures as Debian's 6.1 kernel prints them (recorded under QEMU/TCG with the guest
// image's settings; docs/fault-catalogue.md has the full reactions).
const std::vector<FaultClass>& fault_catalogue() {
  static const std::vector<FaultClass> catalogue = {
      {"null-deref", "process (write syscall)", "dereferences NULL in its write handler",
       "page fault oops, then panic (panic_on_oops)",
       {"BUG: kernel NULL pointer dereference", "Comm: immortal-victim",
        "RIP: 0010:immortal_fault_null_deref", "immortal_fault_write", "Kernel panic - not syncing: Fatal exception"}},
      {"bug", "process (write syscall)", "hits BUG()", "invalid opcode oops (BUG), then panic",
       {"kernel BUG at", "invalid opcode", "Comm: immortal-victim", "RIP: 0010:immortal_fault_bug",
        "Kernel panic - not syncing: Fatal exception"}},
      {"panic", "process (write syscall)", "calls panic()", "panic with the driver's message",
       {"Kernel panic - not syncing: immortal_fault: panic requested by pid", "Comm: immortal-victim",
        "immortal_fault_panic"}},
      {"gpf", "process (write syscall)", "reads a non-canonical address", "general protection fault oops, then panic",
       {"general protection fault", "Comm: immortal-victim", "RIP: 0010:immortal_fault_gpf",
        "Kernel panic - not syncing: Fatal exception"}},
      {"divide", "process (write syscall)", "divides an integer by zero", "divide error oops, then panic",
       {"divide error", "Comm: immortal-victim", "RIP: 0010:immortal_fault_divide",
        "Kernel panic - not syncing: Fatal exception"}},
      {"spinlock-held", "process (write syscall)", "faults while holding its spinlock (reads take it)",
       "NULL pointer oops with the driver's spinlock held, then panic",
       {"BUG: kernel NULL pointer dereference", "Comm: immortal-victim", "RIP: 0010:immortal_fault_null_deref",
        "immortal_fault_spinlock_held", "Kernel panic - not syncing: Fatal exception"}},
      {"mutex-held", "process (write syscall)", "faults while holding its mutex (reads take it)",
       "NULL pointer oops with the driver's mutex held, then panic",
       {"BUG: kernel NULL pointer dereference", "Comm: immortal-victim", "RIP: 0010:immortal_fault_null_deref",
        "immortal_fault_mutex_held", "Kernel panic - not syncing: Fatal exception"}},
      {"timer", "softirq (timer callback)", "arms a timer whose callback dereferences NULL",
       "oops in interrupt context, then panic",
       {"BUG: kernel NULL pointer dereference", "RIP: 0010:immortal_fault_null_deref", "call_timer_fn",
        "Kernel panic - not syncing: Fatal exception in interrupt"}},
      {"workqueue", "kernel thread (kworker)", "queues a work item that dereferences NULL",
       "oops in a kworker, then panic",
       {"BUG: kernel NULL pointer dereference", "Workqueue: events immortal_fault_work_fn",
        "RIP: 0010:immortal_fault_null_deref", "process_one_work", "Kernel panic - not syncing: Fatal exception"}},
      {"softlockup", "process, preemption disabled", "spins with preemption disabled (up to 120 s)",
       "soft lockup report from the watchdog timer, then panic (softlockup_panic)",
       {"watchdog: BUG: soft lockup - CPU#", "immortal-victim", "immortal_fault_softlockup",
        "Kernel panic - not syncing: softlockup: hung tasks"}},
      {"hung-task", "process, uninterruptible sleep", "sleeps in D state (up to 600 s)",
       "hung task report from khungtaskd, then panic (hung_task_panic)",
       {"INFO: task immortal-victim:", "blocked for more than", "msleep", "immortal_fault_write",
        "Kernel panic - not syncing: hung_task: blocked tasks", "Comm: khungtaskd"}},
      {"warn", "process (write syscall)", "WARN()s", "warning, then panic (panic_on_warn)",
       {"immortal_fault: warning requested by pid", "WARNING: CPU:", "immortal_fault_warn",
        "Kernel panic - not syncing: kernel: panic_on_warn set"}},
      {"stack-overflow", "process (write syscall)", "recurses without bound",
       "the stack's guard page is hit (double fault, VMAP_STACK): oops, then panic",
       {"BUG: TASK stack guard page was hit", "stack guard page: 0000", "Comm: immortal-victim",
        "RIP: 0010:immortal_fault_recurse", "Kernel panic - not syncing: Fatal exception"}},
      {"text-corruption", "process (write syscall)", "overwrites the first bytes of one of its functions, then calls it",
       "invalid opcode oops in the corrupted function, then panic",
       {"invalid opcode", "Comm: immortal-victim", "RIP: 0010:immortal_fault_text_target",
        "Kernel panic - not syncing: Fatal exception"}},
      {"list-corruption", "process (write syscall)", "corrupts its own list, then deletes from it",
       "list_del corruption report and BUG (DEBUG_LIST + BUG_ON_DATA_CORRUPTION), then panic",
       {"list_del corruption", "kernel BUG at lib/list_debug.c", "Comm: immortal-victim",
        "immortal_fault_list_corruption", "Kernel panic - not syncing: Fatal exception"}},
  };
  return catalogue;
}

const FaultClass* find_fault_class(const std::string& name) {
  for (const auto& f : fault_catalogue())
    if (name == f.name) return &f;
  return nullptr;
}

bool is_lkdtm_class(const std::string& name) { return name.rfind(kLkdtmPrefix, 0) == 0; }

std::optional<std::string> lkdtm_type(const std::string& name) {
  if (!is_lkdtm_class(name)) return std::nullopt;
  std::string type = name.substr(sizeof kLkdtmPrefix - 1);
  // The type reaches a guest command line and a kernel interface: nothing but LKDTM's letters.
  if (type.empty() || type.size() > 40) return std::nullopt;
  for (char c : type)
    if (!((c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_')) return std::nullopt;
  return type;
}

}  // namespace immortal::vmm
