#include "recovery/plan_validation.h"

#include "base/error.h"
#include "engine/held_locks.h"
#include "engine/held_references.h"
#include "engine/hung_tasks.h"
#include "engine/repair_service.h"
#include "kernel/lock_waiters.h"

#include <fmt/format.h>

#include <algorithm>
#include <cstring>
#include <optional>
#include <set>
#include <span>

namespace immortal::vmm {

namespace {

const std::set<std::string> kRegisters = {"rip", "rsp", "rax", "rbx", "rbp", "rdi", "r12", "r13", "r14", "r15", "eflags"};

// A restore may only put back the healthy copy's own bytes, inside the kernel's code.
void validate_restore(const repair::RepairAction& a, const repair::HealthyImage* healthy) {
  if (!healthy) fail(ExitCode::failure, "restore-code without a healthy copy to check it against");
  if (a.writes.size() > repair::kMaxRestoreRanges || !a.registers.empty())
    fail(ExitCode::failure, "restore-code: {} writes", a.writes.size());
  std::uint64_t total = 0;
  for (const auto& w : a.writes) {
    total += w.bytes.size();
    if (!w.code || w.bytes.empty() || w.bytes.size() != w.expected.size() || total > repair::kMaxRestoreBytes)
      fail(ExitCode::failure, "restore-code: a write of {} bytes at {:#x}", w.bytes.size(), w.address);
    const repair::HealthyRegion* r = healthy->find(w.address, w.bytes.size());
    if (!r) fail(ExitCode::failure, "restore-code: {:#x} is not in the kernel's code", w.address);
    repair::RegionReader copy(*r);
    const std::uint8_t* healthy_bytes = copy.at(w.address - r->address, w.bytes.size());
    if (!std::equal(w.bytes.begin(), w.bytes.end(), healthy_bytes))
      fail(ExitCode::failure, "restore-code: the bytes for {:#x} are not the healthy copy's", w.address);
  }
}

template <typename T>
T value_of(const std::vector<std::uint8_t>& bytes) {
  T v{};
  if (bytes.size() != sizeof v) fail(ExitCode::failure, "release-lock: a write of {} bytes", bytes.size());
  std::memcpy(&v, bytes.data(), sizeof v);
  return v;
}

// A lock release must have exactly the shape of the kernel's own unlock of that kind of lock,
// on a lock in the guest's data (never its code), and a sleeping lock must be owned by the task
// on the crashing CPU now, as the supervisor reads it itself.
void validate_release(const repair::RepairAction& a, const Kernel& kernel, const std::set<std::uint64_t>& owners,
                      const repair::HealthyImage* healthy) {
  const auto& t = kernel.types();
  const auto& m = kernel.memory();
  std::string type = a.detail.value("type", "");
  std::uint64_t lock = repair::parse_hex(a.detail.value("address", nlohmann::json("0x0")), "the lock's address");
  if (lock < kKernelSpaceStart || (lock & 3)) fail(ExitCode::failure, "release-lock: {:#x} is no lock address", lock);
  if (healthy && healthy->find(lock, 1)) fail(ExitCode::failure, "release-lock: {:#x} lies in the kernel's code", lock);
  auto only = [&](std::size_t writes, std::size_t calls) {
    if (a.writes.size() != writes || a.calls.size() != calls)
      fail(ExitCode::failure, "release-lock of a {}: {} writes and {} calls", type, a.writes.size(), a.calls.size());
  };
  auto byte_write = [&](std::uint8_t locked) {
    only(1, 0);
    const auto& w = a.writes[0];
    if (w.address != lock || w.expected != std::vector<std::uint8_t>{locked} || w.bytes != std::vector<std::uint8_t>{0})
      fail(ExitCode::failure, "release-lock: not a {} unlock at {:#x}", type, lock);
  };
  auto call_of = [&](const char* function) {
    only(0, 1);
    const auto& c = a.calls[0];
    if (c.function != function || c.address != kernel.symbol(function) || c.args != std::vector<std::uint64_t>{lock})
      fail(ExitCode::failure, "release-lock: a call of {} ({:#x}) for a {}", c.function, c.address, type);
  };
  auto owned = [&](std::uint64_t owner_at) {
    if (!owners.count(owner_task(m.read_u64(owner_at))))
      fail(ExitCode::failure, "release-lock: the {} at {:#x} is not owned by the crashing task", type, lock);
  };
  if (type == "spinlock") {
    byte_write(0x01);
  } else if (type == "rwlock-write") {
    byte_write(repair::kQrwWriteLocked);
  } else if (type == "rwlock-read") {
    only(1, 0);
    const auto& w = a.writes[0];
    auto before = value_of<std::uint32_t>(w.expected), after = value_of<std::uint32_t>(w.bytes);
    if (w.address != lock || before < repair::kQrwReaderBias || after != before - repair::kQrwReaderBias)
      fail(ExitCode::failure, "release-lock: not a reader's unlock of the rwlock at {:#x}", lock);
  } else if (type == "mutex") {
    std::uint64_t owner = lock + t.offset_of("mutex", "owner");
    owned(owner);
    if (a.calls.empty()) {
      only(1, 0);
      const auto& w = a.writes[0];
      if (w.address != owner || !owners.count(owner_task(value_of<std::uint64_t>(w.expected))) || value_of<std::uint64_t>(w.bytes) != 0)
        fail(ExitCode::failure, "release-lock: not a mutex unlock at {:#x}", lock);
    } else {
      call_of("mutex_unlock");
    }
  } else if (type == "rwsem-write" || type == "rwsem-read") {
    std::uint64_t owner = lock + t.offset_of("rw_semaphore", "owner"), count = lock + t.offset_of("rw_semaphore", "count");
    bool read = type == "rwsem-read";
    std::uint64_t now = m.read_u64(count);
    if (read ? (now >> 8) == 0 : !(now & repair::kRwsemWriterLocked))
      fail(ExitCode::failure, "release-lock: the rwsem at {:#x} is not held that way", lock);
    if (!read) owned(owner);
    if (!a.calls.empty()) {
      call_of(read ? "up_read" : "up_write");
    } else {
      only(read ? 1 : 2, 0);
      for (const auto& w : a.writes) {
        auto before = value_of<std::uint64_t>(w.expected), after = value_of<std::uint64_t>(w.bytes);
        bool ok = w.address == count ? after == before - (read ? repair::kRwsemReaderBias : repair::kRwsemWriterLocked)
                                     : w.address == owner && !read && owners.count(owner_task(before)) && after == 0;
        if (!ok) fail(ExitCode::failure, "release-lock: not an rwsem unlock at {:#x}", lock);
      }
    }
  } else if (type == "semaphore") {
    // A semaphore records no holder: its unit goes back by the kernel's own up().
    call_of("up");
  } else if (type == "socket") {
    // lock_sock() records no owner: the socket must be owned, and is given up by the kernel's
    // own release_sock().
    call_of("release_sock");
    if (m.read_value<std::int32_t>(lock + t.offset_of("sock", "sk_lock.owned")) != 1)
      fail(ExitCode::failure, "release-lock: the socket at {:#x} is not owned", lock);
  } else {
    fail(ExitCode::failure, "release-lock: locks of type \"{}\" are not released", type);
  }
}

// A reference is dropped by the kernel function that drops it, on an object that holds one.
void validate_reference(const repair::RepairAction& a, const Kernel& kernel) {
  const auto& t = kernel.types();
  const auto& m = kernel.memory();
  std::string type = a.detail.value("type", "");
  std::uint64_t object = repair::parse_hex(a.detail.value("object", nlohmann::json("0x0")), "the reference's object");
  const char* release = type == "kernfs-active" ? "kernfs_put_active" : type == "debugfs-file" ? "debugfs_file_put" : nullptr;
  if (!release) fail(ExitCode::failure, "release-reference: references of type \"{}\" are not released", type);
  if (!a.writes.empty() || !a.registers.empty() || a.calls.size() != 1) fail(ExitCode::failure, "release-reference: not one call");
  const auto& c = a.calls[0];
  if (c.function != release || c.address != kernel.symbol(release) || c.args != std::vector<std::uint64_t>{object})
    fail(ExitCode::failure, "release-reference: a call of {} for a {} reference", c.function, type);
  if (type == "kernfs-active") {
    auto active = m.read_value<std::int32_t>(object + t.offset_of("kernfs_node", "active"));
    if (active == 0 || active == repair::kKernfsDeactivatedBias)
      fail(ExitCode::failure, "release-reference: kernfs node {:#x} holds no active reference", object);
  } else {
    std::uint64_t sb = m.read_u64(object + t.offset_of("dentry", "d_sb"));
    std::uint64_t fsd = m.read_u64(object + t.offset_of("dentry", "d_fsdata"));
    if (m.read_u64(sb + t.offset_of("super_block", "s_magic")) != repair::kDebugfsMagic || (fsd & 1) ||
        m.read_value<std::int32_t>(fsd + t.offset_of("debugfs_fsdata", "active_users")) < 1)
      fail(ExitCode::failure, "release-reference: dentry {:#x} is no debugfs file with a reference", object);
  }
}

// A task asleep in D state is ended: its state set from TASK_UNINTERRUPTIBLE to TASK_PARKED (so
// that nothing but the plan's wake-task wakes it), two 8-byte writes on its own stack above
// where it was switched out — schedule()'s return pointed at oops_end()'s kill sequence (found
// by the supervisor itself) and SIGKILL for the register that sequence reads — then the
// kernel's own unlink functions on objects of that stack. A wake-task wakes it later.
std::uint64_t validate_sleeping_kill(const repair::RepairAction& a, const Kernel& kernel) {
  const auto& t = kernel.types();
  const auto& m = kernel.memory();
  std::uint64_t task = repair::parse_hex(a.detail.value("task", nlohmann::json("0x0")), "the task");
  if (task < kKernelSpaceStart) fail(ExitCode::failure, "kill-sleeping-task: {:#x} is no task", task);
  if (m.read_value<std::uint32_t>(task + t.offset_of("task_struct", "__state")) != repair::kTaskUninterruptible ||
      m.read_value<std::int32_t>(task + t.offset_of("task_struct", "on_cpu")))
    fail(ExitCode::failure, "kill-sleeping-task: task {:#x} is not asleep in D state", task);
  std::uint64_t stack = m.read_u64(task + t.offset_of("task_struct", "stack"));
  std::uint64_t sp = m.read_u64(task + t.offset_of("task_struct", "thread.sp"));
  std::uint64_t top = stack + repair::kThreadSize;
  if (sp < stack || sp >= top) fail(ExitCode::failure, "kill-sleeping-task: the task's stack pointer is off its stack");
  auto on_stack = [&](std::uint64_t v, std::size_t size) { return v >= sp && v + size <= top && v + size > v; };
  auto [continuation, reg] = repair::kill_continuation(kernel);
  if (!continuation) fail(ExitCode::failure, "kill-sleeping-task: oops_end()'s kill sequence is not understood");
  if (a.writes.size() != 3 || !a.registers.empty()) fail(ExitCode::failure, "kill-sleeping-task: not three writes");
  const auto& park = a.writes[0];
  if (park.address != task + t.offset_of("task_struct", "__state") || park.code || park.bytes.size() != 4 ||
      park.expected.size() != 4 || value_of<std::uint32_t>(park.expected) != repair::kTaskUninterruptible ||
      value_of<std::uint32_t>(park.bytes) != repair::kTaskParked)
    fail(ExitCode::failure, "kill-sleeping-task: the task is not parked first");
  std::set<std::uint64_t> values;
  for (const auto& w : std::span(a.writes).subspan(1)) {
    if (w.code || w.bytes.size() != 8 || w.expected.size() != 8 || !on_stack(w.address, 8))
      fail(ExitCode::failure, "kill-sleeping-task: a write at {:#x} is not on the task's stack", w.address);
    values.insert(value_of<std::uint64_t>(w.bytes));
  }
  if (values != std::set<std::uint64_t>{continuation, 9})
    fail(ExitCode::failure, "kill-sleeping-task: the writes are not its way to rewind_stack_and_make_dead(SIGKILL)");
  for (std::size_t i = 0; i < a.calls.size(); ++i) {
    const auto& c = a.calls[i];
    bool queued = c.function == "remove_wait_queue" || c.function == "finish_swait";
    bool timer = c.function == "del_timer" || c.function == "timer_delete" || c.function == "hrtimer_cancel";
    if ((!queued && !timer) || c.address != kernel.symbol(c.function) || c.args.size() != (queued ? 2u : 1u) ||
        !on_stack(c.args.back(), 16) || (queued && (c.args[0] < kKernelSpaceStart || on_stack(c.args[0], 8))))
      fail(ExitCode::failure, "kill-sleeping-task: a call of {} ({:#x})", c.function, c.address);
  }
  return task;
}

}  // namespace

void validate_plan(const repair::RepairPlan& plan, const PlanContext& crash, const Kernel& kernel,
                   const repair::HealthyImage* healthy, const PlanLimits& limits) {
  if (!plan.resume) return;  // a reboot touches nothing
  if (plan.vcpu != crash.cpu) fail(ExitCode::failure, "the plan is for vCPU {}, the crash on {}", plan.vcpu, crash.cpu);
  std::size_t quarantines = static_cast<std::size_t>(std::count_if(plan.actions.begin(), plan.actions.end(),
      [](const repair::RepairAction& a) { return a.kind == "quarantine-function"; }));
  if (plan.actions.size() - quarantines > limits.max_actions || quarantines > repair::kMaxQuarantinedFunctions)
    fail(ExitCode::failure, "the plan has {} actions", plan.actions.size());
  if (!healthy) fail(ExitCode::failure, "no healthy copy of the guest's code to check the plan against");
  // Where writes may go: the faulting module (its data for locks, its text for quarantine),
  // the crashing CPU's preempt count and the kernel's taint mask — module bounds as the healthy
  // guest had them, not as the crashed memory says.
  const repair::ModuleLayout* m = crash.module_layout ? &*crash.module_layout : nullptr;
  if (!m) fail(ExitCode::failure, "the plan's module {} is not loaded", crash.module);
  if (m->text_size > ~0ull - m->base) fail(ExitCode::failure, "the module {}'s text wraps the address space", crash.module);
  const AddressRange text{m->base, m->base + m->text_size};
  std::uint64_t preempt = crash.percpu_base + kernel.symbols().percpu_offset("__preempt_count").value_or(0);
  std::uint64_t taint = kernel.symbol("tainted_mask");
  // …and the return address of an end-callback, just below the stack pointer it resumes with.
  std::uint64_t resume_rsp = 0;
  for (const auto& a : plan.actions)
    for (const auto& r : a.registers)
      if (r.name == "rsp") resume_rsp = r.to;
  // …and, for a soft lockup, the stopped code's saved registers (the timer interrupt's frame the
  // kernel recorded in __irq_regs): where it resumes (rewind_stack_and_make_dead) and its rdi.
  std::uint64_t irq_ip = 0, irq_di = 0;
  if (auto irq_regs = kernel.symbols().percpu_offset("__irq_regs")) {
    try {
      if (std::uint64_t frame = kernel.memory().read_u64(crash.percpu_base + *irq_regs)) {
        irq_ip = frame + kernel.types().offset_of("pt_regs", "ip");
        irq_di = frame + kernel.types().offset_of("pt_regs", "di");
      }
    } catch (const MemoryFault&) {
    }
  }
  // …and the crashing task's stack end marker, put back when an overflow overwrote it.
  std::optional<std::uint64_t> current_task;
  std::uint64_t stack_end = 0;
  if (auto current = kernel.symbols().percpu_offset("current_task")) {
    try {
      current_task = kernel.memory().read_u64(crash.percpu_base + *current);
      stack_end = kernel.memory().read_u64(*current_task + kernel.types().offset_of("task_struct", "stack"));
    } catch (const MemoryFault&) {
    }
  }
  // What a kill may write besides the count: an interrupted task's way out, its stack end marker.
  auto kill_write = [&](const repair::RepairAction& a, const repair::MemoryWrite& w) {
    if (a.kind != "kill-task" || w.bytes.size() != 8) return false;
    std::uint64_t v;
    std::memcpy(&v, w.bytes.data(), 8);
    if (irq_ip && ((w.address == irq_ip && v == kernel.symbol("rewind_stack_and_make_dead")) || (w.address == irq_di && v == 9)))
      return true;
    return stack_end && w.address == stack_end && v == repair::kStackEndMagic;
  };
  std::size_t writes = 0, calls = 0;
  // Locks may be released for the task on the crashing CPU, and for sleeping tasks the plan ends.
  std::set<std::uint64_t> owners;
  if (current_task) owners.insert(*current_task);
  for (const auto& a : plan.actions) {
    if (a.kind != "kill-sleeping-task") continue;
    try {
      owners.insert(validate_sleeping_kill(a, kernel));
    } catch (const MemoryFault& e) {
      fail(ExitCode::failure, "kill-sleeping-task: {}", e.what());
    }
    calls += a.calls.size();
    writes += a.writes.size();
  }
  if (owners.size() > 1 + repair::kMaxHungCulprits) fail(ExitCode::failure, "the plan ends too many sleeping tasks");
  std::set<std::uint64_t> parked;  // by a kill-sleeping-task before, not woken yet
  for (const auto& a : plan.actions) {
    if (a.kind == "kill-sleeping-task") {
      parked.insert(repair::parse_hex(a.detail.value("task", nlohmann::json("0x0")), "the task"));
      continue;
    }
    if (a.kind == "wake-task") {
      // The one wake-up of a task a kill-sleeping-task before it parked.
      if (a.calls.size() != 1 || !a.writes.empty() || !a.registers.empty() || a.calls[0].function != "wake_up_state" ||
          a.calls[0].address != kernel.symbol("wake_up_state") || a.calls[0].args.size() != 2 ||
          !parked.count(a.calls[0].args[0]) || a.calls[0].args[1] != repair::kTaskParked)
        fail(ExitCode::failure, "wake-task: not the wake-up of a task the plan parked");
      parked.erase(a.calls[0].args[0]);
      if (++calls > limits.max_calls) fail(ExitCode::failure, "the plan calls too many guest functions");
      continue;
    }
    if (a.kind == "resume-detector") {
      // khungtaskd goes on: its panic flag cleared, its position and stack pointer set.
      std::uint64_t flag = kernel.symbol("hung_task_call_panic");
      if (a.writes.size() != 1 || a.writes[0].address != flag || a.writes[0].bytes != std::vector<std::uint8_t>{0} ||
          a.writes[0].code || !a.calls.empty())
        fail(ExitCode::failure, "resume-detector: not a clear of hung_task_call_panic");
      for (const auto& r : a.registers)
        if (r.name != "rip" && r.name != "rsp") fail(ExitCode::failure, "resume-detector: the plan changes register {}", r.name);
      continue;
    }
    if (a.kind == "restore-code") {
      validate_restore(a, healthy);
      continue;
    }
    if (a.kind == "leave-nmi") {
      // The double fault's exit, for a task the plan then kills: ct_nmi_exit() and the NMI and
      // hard-interrupt levels irqentry_nmi_enter() added taken off the preemption count (one NMI
      // level, as the crashing CPU has now), nothing else.
      bool kills = std::any_of(plan.actions.begin(), plan.actions.end(),
                               [](const repair::RepairAction& k) { return k.kind == "kill-task"; });
      if (!kills || a.calls.size() != 1 || a.writes.size() != 1 || !a.registers.empty() ||
          a.calls[0].function != "ct_nmi_exit" || a.calls[0].address != kernel.symbol("ct_nmi_exit") ||
          !a.calls[0].args.empty())
        fail(ExitCode::failure, "leave-nmi: not a call of ct_nmi_exit() and a preemption count, before a kill");
      const auto& w = a.writes[0];
      if (w.address != preempt || w.code || w.bytes.size() != 4 || w.expected.size() != 4)
        fail(ExitCode::failure, "leave-nmi: a write at {:#x} is not the crashing CPU's preemption count", w.address);
      std::uint32_t before = value_of<std::uint32_t>(w.expected), after = value_of<std::uint32_t>(w.bytes);
      std::uint32_t now = kernel.memory().read_value<std::uint32_t>(preempt);
      if (now != before || (before & repair::kNmiMask) != repair::kNmiOffset || (before & repair::kHardirqMask) == 0 ||
          after != before - repair::kNmiOffset - repair::kHardirqOffset)
        fail(ExitCode::failure, "leave-nmi: {:#x} → {:#x} is not the exit of one NMI level", before, after);
      if (++calls > limits.max_calls || ++writes > limits.max_writes) fail(ExitCode::failure, "the plan writes too often");
      continue;
    }
    if (a.kind == "release-lock") {
      writes += a.writes.size();
      calls += a.calls.size();
      if (writes > limits.max_writes || calls > limits.max_calls) fail(ExitCode::failure, "the plan releases too many locks");
      if (owners.empty()) fail(ExitCode::failure, "the profile has no per-CPU current_task");
      try {
        validate_release(a, kernel, owners, healthy);
      } catch (const MemoryFault& e) {
        fail(ExitCode::failure, "release-lock: {}", e.what());
      }
      if (!a.registers.empty()) fail(ExitCode::failure, "release-lock changes registers");
      continue;
    }
    if (a.kind == "release-reference") {
      if (++calls > limits.max_calls) fail(ExitCode::failure, "the plan calls too many guest functions");
      try {
        validate_reference(a, kernel);
      } catch (const MemoryFault& e) {
        fail(ExitCode::failure, "release-reference: {}", e.what());
      }
      continue;
    }
    if (a.kind == "end-callback" && !a.calls.empty()) {
      // A NAPI poll's end: napi_complete_done(napi, 0) on a scheduled instance whose poll is
      // the blamed module's code.
      if (a.calls.size() != 1 || ++calls > limits.max_calls) fail(ExitCode::failure, "end-callback: not one call");
      const auto& c = a.calls[0];
      if (c.function != "napi_complete_done" || c.address != kernel.symbol("napi_complete_done") || c.args.size() != 2 ||
          c.args[1] != 0)
        fail(ExitCode::failure, "end-callback: a call of {} ({:#x})", c.function, c.address);
      try {
        const auto& t = kernel.types();
        std::uint64_t poll = kernel.memory().read_u64(c.args[0] + t.offset_of("napi_struct", "poll"));
        std::uint64_t state = kernel.memory().read_u64(c.args[0] + t.offset_of("napi_struct", "state"));
        if (!text.contains(poll) || !(state & repair::kNapiStateSched))
          fail(ExitCode::failure, "end-callback: {:#x} is no scheduled NAPI instance of module {}", c.args[0], crash.module);
      } catch (const MemoryFault& e) {
        fail(ExitCode::failure, "end-callback: {}", e.what());
      }
    } else if (!a.calls.empty()) {
      fail(ExitCode::failure, "{}: only a lock or reference release, or a NAPI poll's end, calls guest functions", a.kind);
    }
    if (a.kind == "pin-module") {
      // One reference more on the module: its refcount, in the module's own data, plus one.
      if (a.writes.size() != 1 || a.writes[0].code || a.writes[0].bytes.size() != 4 || !a.registers.empty())
        fail(ExitCode::failure, "pin-module: not one 4-byte write");
      std::uint32_t before, after;
      std::memcpy(&before, a.writes[0].expected.data(), 4);
      std::memcpy(&after, a.writes[0].bytes.data(), 4);
      if (after != before + 1) fail(ExitCode::failure, "pin-module: not a reference more");
    }
    for (const auto& w : a.writes) {
      if (a.kind != "quarantine-function" && ++writes > limits.max_writes) fail(ExitCode::failure, "the plan writes too often");
      if (w.bytes.empty() || w.bytes.size() > limits.max_write_bytes || w.bytes.size() != w.expected.size())
        fail(ExitCode::failure, "{}: a write of {} bytes (expecting {})", a.kind, w.bytes.size(), w.expected.size());
      // contains() cannot wrap: an address near the top of the address space plus a size is
      // not taken for a small one.
      bool ok = w.code ? text.contains(w.address, w.bytes.size())
                       : (m->in_data(w.address, w.bytes.size()) || (w.address == preempt && w.bytes.size() == 4) ||
                          (w.address == taint && w.bytes.size() == 8) ||
                          (a.kind == "end-callback" && resume_rsp && w.address == resume_rsp && w.bytes.size() == 8) ||
                          kill_write(a, w));
      if (!ok) fail(ExitCode::failure, "{}: a write at {:#x} is outside what a repair may touch", a.kind, w.address);
    }
    for (const auto& r : a.registers)
      if (!kRegisters.count(r.name)) fail(ExitCode::failure, "{}: the plan changes register {}", a.kind, r.name);
  }
  if (!parked.empty()) fail(ExitCode::failure, "kill-sleeping-task: a parked task is never woken");
}

}  // namespace immortal::vmm
