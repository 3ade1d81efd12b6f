#include "engine/repair_plan.h"

#include "base/error.h"
#include "engine/dispatchers.h"
#include "kernel/modules.h"
#include "kernel/taint.h"
#include "x86_64/prologue.h"

#include <fmt/format.h>

#include <cstring>
#include <limits>

namespace immortal::repair {

namespace {

constexpr std::uint64_t kSigkill = 9;
constexpr std::uint64_t kHrtimerRestart = 1;        // enum hrtimer_restart
constexpr std::uint64_t kInterruptFlag = 0x200;     // RFLAGS.IF
constexpr std::uint64_t kTrapFlag = 0x100;
constexpr std::size_t kPrologueBytes = 64;
const std::uint8_t kNop5[] = {0x0f, 0x1f, 0x44, 0x00, 0x00};
const std::uint8_t kEndbr64[] = {0xf3, 0x0f, 0x1e, 0xfa};

std::vector<std::uint8_t> read_bytes(const Kernel& kernel, std::uint64_t address, std::size_t n) {
  std::vector<std::uint8_t> out(n);
  kernel.memory().read(address, std::as_writable_bytes(std::span(out)));
  return out;
}

template <typename T>
std::vector<std::uint8_t> bytes_of(T value) {
  std::vector<std::uint8_t> out(sizeof value);
  std::memcpy(out.data(), &value, sizeof value);
  return out;
}

void set_register(RepairAction& action, const X86Registers& before, const char* name, std::uint64_t value) {
  action.registers.push_back({name, *before.field(name), value});
}

// The registers a return to a caller changes: its position and the callee-saved ones.
void set_returned_registers(RepairAction& action, const X86Registers& before, const X86Registers& after) {
  for (const char* r : {"rip", "rsp", "rbx", "rbp", "r12", "r13", "r14", "r15"})
    if (*after.field(r) != *before.field(r)) set_register(action, before, r, *after.field(r));
}

// The callback a dispatcher is running on this CPU, read from the dispatcher's own bookkeeping:
// the tail calls of optimised drivers mean the callback itself may not be on the stack.
std::uint64_t running_callback(const Kernel& kernel, const CrashAnalysis& a, const std::string& dispatcher) {
  const auto& t = kernel.types();
  const auto& m = kernel.memory();
  if (dispatcher == "call_timer_fn") {
    auto bases = kernel.symbols().percpu_offset("timer_bases");
    if (!bases) return 0;
    std::uint64_t size = t.require_size("timer_base");
    for (std::uint64_t i = 0; i < 2; ++i) {  // BASE_STD, BASE_DEF (NO_HZ_COMMON)
      std::uint64_t timer = m.read_u64(a.percpu_base + *bases + i * size + t.offset_of("timer_base", "running_timer"));
      if (timer) return m.read_u64(timer + t.offset_of("timer_list", "function"));
    }
  } else if (dispatcher == "__hrtimer_run_queues") {
    // The running timer of each clock base of this CPU (hrtimer_bases, kernel/time/hrtimer.c).
    auto bases = kernel.symbols().percpu_offset("hrtimer_bases");
    if (!bases) return 0;
    std::uint64_t clock_base = a.percpu_base + *bases + t.offset_of("hrtimer_cpu_base", "clock_base");
    std::uint64_t size = t.require_size("hrtimer_clock_base");
    auto count = t.require_field("hrtimer_cpu_base", "clock_base").size / std::max<std::uint64_t>(size, 1);
    for (std::uint64_t i = 0; i < count && i < 16; ++i) {
      std::uint64_t timer = m.read_u64(clock_base + i * size + t.offset_of("hrtimer_clock_base", "running"));
      if (timer) return m.read_u64(timer + t.offset_of("hrtimer", "function"));
    }
  } else if (dispatcher == "process_one_work") {
    // kthread_data(current): task->worker_private is the struct kthread (kernel/kthread.c).
    std::uint64_t kthread = m.read_u64(a.task + t.offset_of("task_struct", "worker_private"));
    std::uint64_t worker = m.read_u64(kthread + t.offset_of("kthread", "data"));
    return m.read_u64(worker + t.offset_of("worker", "current_func"));
  }
  return 0;
}

// Patch a module function so that later calls return -EIO instead of running it.
// What a quarantined function returns at once, as its callers expect it (its BTF prototype):
// -EIO for integers and unknown types, NULL, false, IRQ_NONE or nothing (0) for the others.
struct QuarantineReturn {
  std::vector<std::uint8_t> body;
  const char* value;
};
QuarantineReturn quarantine_return(ReturnType type) {
  switch (type) {
    case ReturnType::signed_integer:
    case ReturnType::unknown: return {{0x48, 0xc7, 0xc0, 0xfb, 0xff, 0xff, 0xff}, "-EIO"};  // mov $-5,%rax
    case ReturnType::pointer: return {{0x31, 0xc0}, "NULL"};                                // xor %eax,%eax
    case ReturnType::boolean: return {{0x31, 0xc0}, "false"};
    case ReturnType::irqreturn: return {{0x31, 0xc0}, "IRQ_NONE"};
    case ReturnType::unsigned_integer: return {{0x31, 0xc0}, "0"};
    // An enum's 0 is by convention "nothing happened": HRTIMER_NORESTART, IRQ_NONE …
    case ReturnType::enumeration: return {{0x31, 0xc0}, "0 (its first enumerator)"};
    case ReturnType::none: return {{0x31, 0xc0}, "nothing"};
  }
  return {{0x48, 0xc7, 0xc0, 0xfb, 0xff, 0xff, 0xff}, "-EIO"};
}

}  // namespace

std::vector<std::uint8_t> quarantine_patch(ReturnType type, std::uint64_t address, std::optional<std::uint64_t> thunk,
                                           std::optional<std::uint64_t> call_first) {
  std::vector<std::uint8_t> patch;
  if (call_first) {
    patch = {0x31, 0xf6, 0xe8};  // xor %esi,%esi; call call_first (%rdi is still the entry's own)
    auto rel = static_cast<std::int32_t>(static_cast<std::int64_t>(*call_first) - static_cast<std::int64_t>(address + 7));
    auto b = bytes_of(rel);
    patch.insert(patch.end(), b.begin(), b.end());
  }
  auto body = quarantine_return(type).body;
  patch.insert(patch.end(), body.begin(), body.end());
  if (thunk) {
    // Return the way the kernel's own functions do (CONFIG_RETHUNK): jmp __x86_return_thunk.
    std::uint64_t jmp_at = address + patch.size();  // after the call and the return value
    auto rel = static_cast<std::int32_t>(static_cast<std::int64_t>(*thunk) - static_cast<std::int64_t>(jmp_at + 5));
    patch.push_back(0xe9);
    auto b = bytes_of(rel);
    patch.insert(patch.end(), b.begin(), b.end());
  } else {
    patch.push_back(0xc3);  // ret
  }
  return patch;
}

namespace {

// Patch a module function so that later calls return at once instead of running it.
std::optional<RepairAction> quarantine(const Kernel& kernel, const CrashRecord& record, std::uint64_t function,
                                       const std::string& why, std::vector<std::string>& notes,
                                       std::optional<ReturnType> expected = std::nullopt, bool napi_poll = false) {
  const auto& symbols = kernel.symbols();
  auto s = symbols.lookup(function);
  if (!s || s->address != function || s->module().empty()) {
    notes.push_back(fmt::format("{} is not the start of a module function: not quarantined", symbols.describe(function)));
    return std::nullopt;
  }
  auto next = symbols.next_after(*s);
  std::uint64_t room = next ? next->address - s->address : 16;
  auto head = read_bytes(kernel, function, 32);
  // Keep the endbr64 an indirect call must land on (IBT) and the ftrace site after it (ftrace
  // checks those bytes before it rewrites them).
  std::uint64_t at = 0;
  if (std::memcmp(head.data(), kEndbr64, 4) == 0) at += 4;
  if (std::memcmp(head.data() + at, kNop5, 5) == 0 || head[at] == 0xe8) at += 5;
  // The type the caller expects: from the module's BTF, else from the dispatcher that calls it.
  ReturnType type = kernel.function_return(s->module(), base_function_name(s->name()));
  if (type == ReturnType::unknown && expected) type = *expected;
  // A NAPI poll completes its instance and reports no work done.
  std::optional<std::uint64_t> call_first;
  if (napi_poll) {
    type = ReturnType::unsigned_integer;
    call_first = kernel.symbol("napi_complete_done");
  }
  auto ret = quarantine_return(type);
  std::vector<std::uint8_t> patch = quarantine_patch(type, function + at, symbols.address_of("__x86_return_thunk"), call_first);
  if (std::equal(patch.begin(), patch.end(), head.begin() + static_cast<long>(at))) {
    notes.push_back(fmt::format("{} is already quarantined", s->name()));
    return std::nullopt;
  }
  if (room < at + patch.size()) {
    notes.push_back(fmt::format("{} is too short to patch ({} bytes)", s->name(), room));
    return std::nullopt;
  }
  for (std::size_t v = 0; v < record.registers.size(); ++v) {
    std::uint64_t rip = record.registers[v].rip;
    if (static_cast<int>(v) != record.vcpu && rip >= function && rip < function + at + patch.size()) {
      notes.push_back(fmt::format("CPU {} executes the entry of {}: not quarantined", v, s->name()));
      return std::nullopt;
    }
  }
  RepairAction q{"quarantine-function", why, {}, {}, {}, {}};
  q.writes.push_back({function + at, std::vector<std::uint8_t>(head.begin() + static_cast<long>(at),
                                                               head.begin() + static_cast<long>(at + patch.size())),
                      patch, true});
  q.detail = {{"module", s->module()}, {"function", s->name()}, {"address", fmt::format("{:#x}", function)},
              {"patched_at", fmt::format("{:#x}", function + at)}, {"returns", ret.value},
              {"return_type", to_string(type)}};
  if (type == ReturnType::unknown) q.detail["note"] = "no BTF prototype for it: it returns -EIO";
  if (napi_poll) q.detail["note"] = "a NAPI poll: it calls napi_complete_done(napi, 0) first";
  return q;
}

// The driver's entry points: its functions whose addresses its own data holds (file and device
// operations, callbacks it registered), apart from its init and exit functions and the tables
// the kernel keeps of every function (its symbol table, ftrace's call sites).
std::vector<std::uint64_t> driver_entry_points(const Kernel& kernel, const ModuleInfo& mod) {
  std::vector<std::uint64_t> out;
  const ModuleInfo* m = &mod;
  auto ranges = m->non_text();
  std::uint64_t total = 0;
  for (const auto& r : ranges) total += r.size();
  if (ranges.empty() || total > (64u << 20)) return out;
  const auto& t = kernel.types();
  std::uint64_t init = 0, exit = 0;
  std::vector<std::pair<std::uint64_t, std::uint64_t>> tables;  // [start, end) not to look in
  try {
    const auto& mem = kernel.memory();
    init = mem.read_u64(m->address + t.offset_of("module", "init"));
    exit = mem.read_u64(m->address + t.offset_of("module", "exit"));
    tables.emplace_back(m->address, m->address + t.require_size("module"));
    std::uint64_t symtab = mem.read_u64(m->address + t.offset_of("module", "core_kallsyms.symtab"));
    auto nsyms = mem.read_value<std::uint32_t>(m->address + t.offset_of("module", "core_kallsyms.num_symtab"));
    tables.emplace_back(symtab, symtab + 24ull * nsyms);
    std::uint64_t sites = mem.read_u64(m->address + t.offset_of("module", "ftrace_callsites"));
    auto nsites = mem.read_value<std::uint32_t>(m->address + t.offset_of("module", "num_ftrace_callsites"));
    tables.emplace_back(sites, sites + 8ull * nsites);
  } catch (const std::exception&) {
    return out;  // without knowing its tables every function would look like an entry point
  }
  // Every aligned word of the module's data and read-only data, with its address.
  std::vector<std::pair<std::uint64_t, std::uint64_t>> words;  // address, value
  for (const auto& r : ranges)
    for (std::uint64_t at = (r.begin + 7) & ~7ull; at + 8 <= r.end; at += 8) {
      try {
        words.emplace_back(at, kernel.memory().read_u64(at));
      } catch (const MemoryFault&) {
      }
    }
  for (const auto& word : words) {
    std::uint64_t at = word.first, w = word.second;
    if (w < m->base || w >= m->base + m->text_size || w == init || w == exit) continue;
    if (std::any_of(tables.begin(), tables.end(), [&](const auto& r) { return at >= r.first && at < r.second; })) continue;
    auto s = kernel.symbols().lookup(w);
    if (!s || s->address != w || s->module() != m->name || (s->type() != 't' && s->type() != 'T')) continue;
    if (s->name() == "init_module" || s->name() == "cleanup_module" || s->name().find(".cold") != std::string::npos) continue;
    if (std::find(out.begin(), out.end(), w) == out.end()) out.push_back(w);
    if (out.size() >= kMaxQuarantinedFunctions) break;
  }
  return out;
}

// The writes or the call that release one lock held by the crashing task or CPU, as the
// kernel's unlock does: a spinlock's or a write-held rwlock's locked byte cleared
// (queued_spin_unlock, queued_write_unlock), a reader's bias taken off an rwlock; a sleeping lock
// nobody waits for by its fast path (owner cleared, count dropped); one with waiters by a call of
// its unlock function on the crashing vCPU, which wakes them.
std::optional<RepairAction> release_lock(const Kernel& kernel, const HeldLock& h, std::int64_t& preempt_release) {
  const auto& t = kernel.types();
  RepairAction r{"release-lock", "", {}, {}, {}, {}};
  std::string kind = to_string(h.type);
  if (h.type == LockType::rwlock || h.type == LockType::rwsem) kind += h.read ? "-read" : "-write";
  std::string whose = h.type == LockType::spinlock || h.type == LockType::rwlock ? "the crashing CPU" : "the crashing task";
  r.reason = fmt::format("{} {} was held by {}{}", kind, h.name, whose,
                         h.waiters.empty() ? "" : fmt::format(" ({} waiting)", h.waiters.size()));
  r.detail = {{"lock", h.name}, {"type", kind}, {"address", fmt::format("{:#x}", h.address)}, {"waiters", h.waiters},
              {"found_by", h.found_by}};
  auto call = [&](const char* function) {
    r.calls.push_back({function, kernel.symbol(function), {h.address}});
    r.reason += fmt::format(": {}() wakes the waiters", function);
  };
  switch (h.type) {
    case LockType::spinlock:
      preempt_release += h.preempt_delta;
      r.writes.push_back({h.address, {static_cast<std::uint8_t>(h.word & 0xff)}, {0}, false});
      return r;
    case LockType::rwlock:
      preempt_release += h.preempt_delta;
      if (h.read) {
        auto word = static_cast<std::uint32_t>(h.word);
        r.writes.push_back({h.address, bytes_of(word), bytes_of(word - kQrwReaderBias), false});
      } else {
        r.writes.push_back({h.address, {static_cast<std::uint8_t>(h.word & 0xff)}, {0}, false});
      }
      return r;
    case LockType::mutex: {
      std::uint64_t owner = h.address + t.offset_of("mutex", "owner");
      std::uint64_t list = h.address + t.offset_of("mutex", "wait_list");
      bool waiters = (h.word & 7) != 0 || kernel.memory().read_u64(list) != list;
      if (waiters) {
        call("mutex_unlock");
      } else {
        r.writes.push_back({owner, bytes_of(h.word), bytes_of(std::uint64_t{0}), false});
      }
      return r;
    }
    case LockType::rwsem: {
      std::uint64_t count_at = h.address + t.offset_of("rw_semaphore", "count");
      std::uint64_t owner_at = h.address + t.offset_of("rw_semaphore", "owner");
      if (h.count & kRwsemFlagWaiters) {
        call(h.read ? "up_read" : "up_write");
      } else if (h.read) {
        r.writes.push_back({count_at, bytes_of(h.count), bytes_of(h.count - kRwsemReaderBias), false});
      } else {
        r.writes.push_back({owner_at, bytes_of(h.word), bytes_of(std::uint64_t{0}), false});
        r.writes.push_back({count_at, bytes_of(h.count), bytes_of(h.count - kRwsemWriterLocked), false});
      }
      return r;
    }
    case LockType::socket:
      // release_sock(): processes the backlog the owner deferred, clears the owner and wakes
      // the tasks waiting in lock_sock().
      r.calls.push_back({"release_sock", kernel.symbol("release_sock"), {h.address}});
      r.reason += ": release_sock() gives it up and wakes the waiters";
      return r;
    case LockType::semaphore:
      // up(): the unit back, the first waiter woken.
      r.calls.push_back({"up", kernel.symbol("up"), {h.address}});
      r.reason += ": up() gives the unit back and wakes a waiter";
      return r;
  }
  return std::nullopt;
}

}  // namespace

std::string hex_bytes(const std::vector<std::uint8_t>& bytes) {
  std::string s;
  for (auto b : bytes) s += fmt::format("{:02x}", b);
  return s;
}


X86Registers return_from_frame(const Kernel& kernel, const Backtrace& bt, std::size_t from, X86Registers state,
                               std::size_t target, std::map<std::string, std::uint64_t>* restored_from) {
  const auto& symbols = kernel.symbols();
  const auto& frames = bt.frames;
  if (from > target || target + 1 >= frames.size()) fail(ExitCode::bad_input, "no caller frame to return to");
  for (std::size_t i = from; i <= target; ++i) {
    const Frame& f = frames[i];
    bool exact = i == from && (f.regs != 0 || i == 0);  // pc is not a return address
    auto s = symbols.lookup(exact ? f.pc : f.pc - 1);
    if (!s) fail(ExitCode::bad_input, "no symbol for {:#x}", f.pc);
    std::uint64_t start = s->address;
    std::uint32_t at = static_cast<std::uint32_t>(f.pc - start);
    if (s->name().find(".cold") != std::string::npos) {
      // A split-off cold part runs with its parent's frame, its prologue complete.
      auto parent = symbols.address_in(cold_part_parent(s->name()), s->module());
      if (!parent) fail(ExitCode::bad_input, "no parent function for {}", s->name());
      start = *parent;
      at = std::numeric_limits<std::uint32_t>::max();
    }
    Prologue p = decode_prologue(read_bytes(kernel, start, kPrologueBytes));
    std::uint64_t cfa = frames[i + 1].sp;
    std::uint64_t depth = frame_depth_at(p, at);
    if (!p.frame_pointer && cfa - 8 - f.sp != depth)
      fail(ExitCode::bad_input, "the prologue of {} ({} bytes saved) does not match the stack ({} bytes)",
           cold_part_parent(s->name()), depth, cfa - 8 - f.sp);
    for (std::size_t j = 0; j < p.pushes.size(); ++j) {
      if (p.pushes[j].offset >= at) continue;
      *state.field(p.pushes[j].name) = kernel.memory().read_u64(cfa - 16 - 8 * j);
      if (restored_from) (*restored_from)[p.pushes[j].name] = cfa - 16 - 8 * j;
    }
    if (i == target) {
      state.rip = kernel.memory().read_u64(cfa - 8);
      state.rsp = cfa;
    }
  }
  return state;
}

namespace {

// The plan resumes with these groups of actions, in this order; its reason names them, then
// the notes.
RepairPlan resume_with(RepairPlan plan, std::initializer_list<std::vector<RepairAction>*> groups,
                       const std::vector<std::string>& notes) {
  for (auto* group : groups)
    for (auto& x : *group) plan.actions.push_back(std::move(x));
  plan.resume = true;
  std::vector<std::string> kinds;
  for (const auto& x : plan.actions) kinds.push_back(x.kind);
  plan.reason = fmt::format("{}", fmt::join(kinds, ", "));
  for (const auto& n : notes) plan.reason += "; " + n;
  return plan;
}

// A hung task (hung_tasks.h): each culprit's locks released, its linked stack objects unlinked,
// its schedule() pointed at its death and the task woken; its entry point quarantined;
// khungtaskd goes on without the panic.
RepairPlan plan_hung_tasks(const Kernel& kernel, const CrashRecord& record, const CrashAnalysis& a, RepairPlan plan) {
  const X86Registers& regs = record.registers.at(static_cast<std::size_t>(record.vcpu));
  const auto& symbols = kernel.symbols();
  // Order: nothing may wake the culprit into its driver code once its locks are released, so
  // it is parked first (a state only the final wake-up matches), its schedule() pointed at its
  // death; then its locks are released and its stack's links undone; then it is woken.
  std::vector<RepairAction> quarantined, stop, release, wake, end_context;
  std::vector<std::string> notes;
  for (const auto& h : a.hung.tasks) {
    if (!h.culprit) continue;
    for (const auto& lock : h.locks) {
      std::int64_t spin = 0;
      auto r = release_lock(kernel, lock, spin);
      if (!r || spin) {
        plan.reason = "lock " + lock.name + " of the hung task cannot be released";
        return plan;
      }
      release.push_back(std::move(*r));
    }
    RepairAction kill{"kill-sleeping-task", fmt::format("{} (pid {}) sleeps for ever in module {} ({})", h.comm, h.pid,
                                                        h.module, h.function), {}, {}, {}, {}};
    std::uint64_t state = h.task + kernel.types().offset_of("task_struct", "__state");
    kill.writes.push_back({state, bytes_of(kTaskUninterruptible), bytes_of(kTaskParked), false});
    kill.writes.push_back({h.return_slot, bytes_of(h.return_address), bytes_of(a.hung.continuation), false});
    kill.writes.push_back({h.signal_slot, bytes_of(h.signal_slot_value), bytes_of(kSigkill), false});
    nlohmann::json unlinked = nlohmann::json::array();
    for (const auto& l : h.links) {
      std::vector<std::uint64_t> args = l.queue ? std::vector<std::uint64_t>{l.queue, l.object} : std::vector<std::uint64_t>{l.object};
      kill.calls.push_back({l.release, kernel.symbol(l.release), args});
      unlinked.push_back(l.to_json());
    }
    if (kill.calls.size() > kMaxActionCalls) {
      plan.reason = fmt::format("{} (pid {}) has {} objects of its stack linked into the kernel", h.comm, h.pid, h.links.size());
      return plan;
    }
    kill.detail = {{"task", fmt::format("{:#x}", h.task)}, {"pid", h.pid}, {"comm", h.comm}, {"signal", "SIGKILL"},
                   {"schedule_returns_to", symbols.describe(a.hung.continuation)},
                   {"register", a.hung.continuation_register}, {"unlinked", unlinked}};
    stop.push_back(std::move(kill));
    RepairAction w{"wake-task", fmt::format("{} (pid {}) runs into its death", h.comm, h.pid), {}, {}, {}, {}};
    w.calls.push_back({"wake_up_state", kernel.symbol("wake_up_state"), {h.task, kTaskParked}});
    w.detail = {{"task", fmt::format("{:#x}", h.task)}, {"pid", h.pid}};
    wake.push_back(std::move(w));
    const Frame& entry = h.backtrace.frames.at(static_cast<std::size_t>(h.entry_frame));
    if (auto s = symbols.lookup(entry.pc - 1)) {
      auto parent = symbols.address_in(cold_part_parent(s->name()), s->module());
      if (auto q = quarantine(kernel, record, parent ? *parent : s->address,
                              "later calls of the entry point where it slept fail with EIO", notes))
        quarantined.push_back(std::move(*q));
    }
  }
  RepairAction resume{"resume-detector", "khungtaskd goes on as it does without hung_task_panic", {}, {}, {}, {}};
  set_register(resume, regs, "rip", a.hung.detector_resume);
  set_register(resume, regs, "rsp", a.hung.detector_rsp);
  std::uint64_t flag = kernel.symbol("hung_task_call_panic");
  resume.writes.push_back({flag, read_bytes(kernel, flag, 1), {0}, false});
  resume.detail = {{"resumes_at", symbols.describe(a.hung.detector_resume)}};
  end_context.push_back(std::move(resume));
  return resume_with(std::move(plan), {&quarantined, &stop, &release, &wake, &end_context}, notes);
}

}  // namespace

RepairPlan plan_repair(const Kernel& kernel, const CrashRecord& record, const CrashAnalysis& a, const PlanOptions& options) {
  RepairPlan plan;
  plan.vcpu = record.vcpu;
  if (!a.unsafe.empty()) {
    plan.reason = fmt::format("{}", fmt::join(a.unsafe, "; "));
    return plan;
  }
  const X86Registers& regs = record.registers.at(static_cast<std::size_t>(record.vcpu));
  const auto& symbols = kernel.symbols();
  std::vector<std::string> notes;
  std::uint32_t count = a.preempt_count;
  std::int64_t preempt_release = 0;  // what the released spinlocks had added to preempt_count
  // The order the supervisor applies them in: code first (restore, quarantine: nobody enters
  // the crashing entry point again while the guest runs during a lock's release), then the
  // locks, then what ends the crashing context, then bookkeeping.
  std::vector<RepairAction> leave, release, end_context, quarantined, bookkeeping;
  try {
    if (a.kind == "hung-task") return plan_hung_tasks(kernel, record, a, plan);
    // 0. A stack overflow was caught by the double fault's handler, in an NMI-like context on
    //    its own stack: leave it as its exit would (ct_nmi_exit(), the NMI and hard-interrupt
    //    levels taken off the preemption count), so that what follows runs in the task's context.
    if (a.kind == "stack-overflow" && a.detector_levels) {
      RepairAction l{"leave-nmi", "the double fault's handler entered an NMI-like context that its exit would have "
                     "left", {}, {}, {}, {}};
      std::uint32_t task_count = count - a.detector_levels;
      l.writes.push_back({a.percpu_base + *symbols.percpu_offset("__preempt_count"), bytes_of(count), bytes_of(task_count),
                          false});
      l.calls.push_back({"ct_nmi_exit", kernel.symbol("ct_nmi_exit"), {}});
      l.detail = {{"levels", fmt::format("{:#x}", a.detector_levels)}};
      leave.push_back(std::move(l));
      count = task_count;
    }
    // 1. What the kernel code on the crashing path took for the driver, dropped as it would have
    //    after the driver returned; then the locks the crash left held, released as the kernel's
    //    own unlock would.
    for (const auto& ref : a.references) {
      RepairAction r{"release-reference", fmt::format("{} took a {} reference the driver's crash would leak", ref.taken_by,
                                                      ref.type), {}, {}, {}, {}};
      r.detail = {{"type", ref.type}, {"object", fmt::format("{:#x}", ref.object)}, {"taken_by", ref.taken_by}};
      r.calls.push_back({ref.release, kernel.symbol(ref.release), {ref.object}});
      release.push_back(std::move(r));
    }
    for (const auto& h : a.locks) {
      if (!h.ours) continue;
      auto r = release_lock(kernel, h, preempt_release);
      if (!r) {
        plan.reason = "lock " + h.name + " cannot be released: its kind is not one this version releases";
        return plan;
      }
      release.push_back(std::move(*r));
    }

    // 2. End the crashing context.
    std::uint64_t quarantine_target = 0;
    std::string quarantine_why;
    std::optional<ReturnType> callback_returns;
    bool quarantine_napi = false;
    const Frame& entry = a.backtrace.frames.at(static_cast<std::size_t>(a.outer_module_frame));
    auto entry_symbol = symbols.lookup(static_cast<int>(a.outer_module_frame) == a.fault_frame &&
                                       a.kind != "panic" ? entry.pc : entry.pc - 1);
    if (entry_symbol) {
      auto parent = symbols.address_in(cold_part_parent(entry_symbol->name()), entry_symbol->module());
      quarantine_target = parent ? *parent : entry_symbol->address;
    }
    if (a.context == "process" || (a.context == "kernel-thread" && base_function_name(a.outer_caller) == "kthread")) {
      // As the kernel does for an oops with panic_on_oops=0 (oops_end): the task dies with SIGKILL.
      // A driver's own kernel thread (its thread function called by kthread()) dies the same
      // way: do_exit() completes its exit for whoever waits in kthread_stop().
      bool lockup = a.kind == "soft-lockup";
      std::uint64_t task_sp = lockup ? a.fault_registers.rsp : regs.rsp;
      // A stray access to the stack's guard page is reported from the #DF stack
      // (handle_stack_overflow() runs there); rewind_stack_and_make_dead leaves it for the task's.
      bool guard_report = (a.kind == "oops" || a.kind == "stack-overflow") &&
                          a.oops_header.find("stack guard page") != std::string::npos;
      if (guard_report) task_sp = a.fault_registers.rsp;
      // An overflow's stack pointer is in the guard page just below the stack.
      std::uint64_t low = a.kind == "stack-overflow" ? a.task_stack - kGuardPage : a.task_stack;
      if (task_sp < low || task_sp >= a.task_stack + kThreadSize) {
        plan.reason = lockup ? "the spinning code is not on its task's stack" : "the crashing CPU is not on its task's stack";
        return plan;
      }
      RepairAction kill{"kill-task", fmt::format("{} (pid {}) made module {} {}", a.comm, a.pid, a.module,
                                                 lockup ? "spin with preemption off (a soft lockup)"
                                                 : a.kind == "stack-overflow" ? "overflow its stack" : "crash"),
                        {}, {}, {}, {}};
      if (lockup) {
        // The watchdog's timer returns as it does with softlockup_panic=0 (HRTIMER_RESTART: it
        // goes on watching), and the interrupt returns — into rewind_stack_and_make_dead(SIGKILL)
        // instead of the spinning loop: its saved registers say where to.
        X86Registers after = return_from_frame(kernel, a.backtrace, 0, regs, 1);
        RepairAction watchdog{"end-callback", "the soft-lockup watchdog's timer returns HRTIMER_RESTART, as it does "
                              "without softlockup_panic", {}, {}, {}, {}};
        set_returned_registers(watchdog, regs, after);
        set_register(watchdog, regs, "rax", kHrtimerRestart);
        watchdog.detail = {{"dispatcher", "__hrtimer_run_queues"}, {"callback", "watchdog_timer_fn"}};
        end_context.push_back(std::move(watchdog));
        std::uint64_t frame = a.backtrace.frames.at(static_cast<std::size_t>(a.fault_frame)).regs;
        std::uint64_t ip = frame + kernel.types().offset_of("pt_regs", "ip");
        std::uint64_t di = frame + kernel.types().offset_of("pt_regs", "di");
        kill.writes.push_back({ip, read_bytes(kernel, ip, 8), bytes_of(kernel.symbol("rewind_stack_and_make_dead")), false});
        kill.writes.push_back({di, read_bytes(kernel, di, 8), bytes_of(kSigkill), false});
        kill.detail["interrupt_frame"] = fmt::format("{:#x}", frame);
      } else {
        set_register(kill, regs, "rip", kernel.symbol("rewind_stack_and_make_dead"));
        set_register(kill, regs, "rdi", kSigkill);
      }
      // make_task_dead() panics for in_interrupt() (bottom halves disabled by the driver count),
      // and resets the levels a dying task still has with a note ("exited with preempt_count")
      // that would read as a task dying with a spinlock held (spin_wait.h trusts that note). Its
      // locks are released above and what is left are sections of the path it leaves: the levels
      // are taken off here instead. (A lockup's timer interrupt keeps its own until it returns.)
      if (std::uint32_t fixed = count & ~(kSoftirqMask | kPreemptMask); fixed != count) {
        kill.writes.push_back({a.percpu_base + *symbols.percpu_offset("__preempt_count"), bytes_of(count),
                               bytes_of(fixed), false});
        count = fixed;
      }
      // A stack that overflowed may have lost its end marker on the way down; the dying task
      // schedules once more (do_task_dead) and schedule_debug() would panic for it.
      if (std::vector<std::uint8_t> end = read_bytes(kernel, a.task_stack, 8); end != bytes_of(kStackEndMagic)) {
        kill.writes.push_back({a.task_stack, end, bytes_of(kStackEndMagic), false});
        kill.detail["stack_end_restored"] = fmt::format("{:#x}", a.task_stack);
      }
      kill.detail.update({{"pid", a.pid}, {"comm", a.comm}, {"signal", "SIGKILL"}});
      end_context.push_back(std::move(kill));
      quarantine_why = fmt::format("later calls of the entry point that crashed fail with EIO");
    } else if (a.kind == "warn") {
      // A warning in a kernel thread or softirq: let it complete as a warning
      // (check_panic_on_warn() returns as it would with panic_on_warn=0).
      X86Registers after = return_from_frame(kernel, a.backtrace, 0, regs, 1);
      RepairAction w{"complete-warning", "the warning completes as a warning; the " + a.context + " goes on", {}, {}, {}, {}};
      set_returned_registers(w, regs, after);
      end_context.push_back(std::move(w));
    } else {
      const Dispatcher* d = dispatcher_named(a.outer_caller);
      if (a.module_symbols_stale) {
        plan.reason = "the driver's code has no symbols in the guest profile (loaded after it was taken): its "
                      "frames cannot be undone";
        return plan;
      }
      if (!d) {
        plan.reason = fmt::format("the crash is in {} context, called by {}, which has no known way to end the "
                                  "driver's call", a.context, a.outer_caller);
        return plan;
      }
      X86Registers after = return_from_frame(kernel, a.backtrace, static_cast<std::size_t>(a.fault_frame),
                                             a.fault_registers, static_cast<std::size_t>(a.outer_module_frame));
      RepairAction end{"end-callback", fmt::format("the {} returns to {} as if it had finished", d->what, d->function),
                       {}, {}, {}, {}};
      std::uint64_t flags = (a.fault_registers.rflags & ~kTrapFlag);
      flags = d->interrupts_on ? flags | kInterruptFlag : flags & ~kInterruptFlag;
      if (a.pid == 0) {
        // The fault's exception entry on the idle task entered an RCU/context-tracking interrupt
        // section (irqentry_enter(): is_idle_task → ct_irq_enter()) that its exit would have left.
        // Leave it: call ct_irq_exit() with interrupts off, returning straight into the
        // dispatcher (its return address pushed just below the dispatcher's stack pointer).
        // The dispatchers take their lock with _irq next, which turns interrupts on again.
        std::uint64_t continuation = after.rip;
        std::uint64_t slot = after.rsp - 8;
        end.writes.push_back({slot, read_bytes(kernel, slot, 8), bytes_of(continuation), false});
        after.rip = kernel.symbol("ct_irq_exit");
        after.rsp = slot;
        flags &= ~kInterruptFlag;
        end.detail["context_tracking"] = "ct_irq_exit() called on the way back (idle task)";
      }
      set_returned_registers(end, regs, after);
      set_register(end, regs, "rax", d->ended_as);
      set_register(end, regs, "eflags", flags);
      if (preempt_release) {
        std::uint32_t fixed = static_cast<std::uint32_t>(count - preempt_release);
        end.writes.push_back({a.percpu_base + *symbols.percpu_offset("__preempt_count"), bytes_of(count),
                              bytes_of(fixed), false});
      }
      end.detail["dispatcher"] = d->function;
      bool napi_poll = std::string(d->function) == "__napi_poll";
      if (napi_poll) {
        // Off the schedule first, as the poll would have done (napi_complete_done, in this
        // softirq's own context), then back to __napi_poll with no work done.
        if (!a.napi) {
          plan.reason = "the NAPI instance of the crashed poll is not known";
          return plan;
        }
        end.calls.push_back({"napi_complete_done", kernel.symbol("napi_complete_done"), {a.napi, 0}});
        end.detail["napi"] = fmt::format("{:#x}", a.napi);
      }
      end_context.push_back(std::move(end));
      if (std::uint64_t cb = running_callback(kernel, a, d->function)) {
        if (auto s = symbols.lookup(cb); s && s->module() == a.module) quarantine_target = cb;
      }
      if (napi_poll) {
        std::uint64_t poll = kernel.memory().read_u64(a.napi + kernel.types().offset_of("napi_struct", "poll"));
        if (auto s = symbols.lookup(poll); s && s->module() == a.module && s->address == poll) quarantine_target = poll;
        quarantine_napi = true;
      }
      quarantine_why = fmt::format("the {} is not run again: it returns at once", d->what);
      callback_returns = d->returns;
    }

    // 3. Quarantine the driver's entry point.
    if (a.kind == "text-corruption") {
      notes.push_back("the corrupted code is restored, not quarantined");
    } else if (a.module_symbols_stale && !quarantine_why.empty()) {
      notes.push_back("the driver's functions are not in the guest profile (loaded after it was taken): not quarantined");
    } else if (a.fault_in_init && !quarantine_why.empty()) {
      notes.push_back("the crash is in the module's init code, which runs once: nothing to quarantine");
    } else if (!quarantine_why.empty() && quarantine_target) {
      if (auto q = quarantine(kernel, record, quarantine_target, quarantine_why, notes, callback_returns, quarantine_napi))
        quarantined.push_back(*q);
      if (options.quarantine_driver) {
        // --quarantine driver: every entry point of the driver, not only the one that crashed,
        // and the module pinned (its refcount raised) so that it cannot be unloaded while its
        // remove() and release() return at once: the kernel would keep pointers into it.
        ModuleList modules = read_modules(kernel);
        for (const auto& m : modules.modules) {
          if (m.name != a.module) continue;
          std::vector<std::string> quiet;
          for (std::uint64_t f : driver_entry_points(kernel, m))
            if (f != quarantine_target)
              if (auto q = quarantine(kernel, record, f, "the whole driver is quarantined (--quarantine driver)", quiet))
                quarantined.push_back(*q);
          std::uint64_t refcnt = m.address + kernel.types().offset_of("module", "refcnt");
          auto now = kernel.memory().read_value<std::uint32_t>(refcnt);
          RepairAction pin{"pin-module", "the quarantined driver must stay loaded", {}, {}, {}, {}};
          pin.writes.push_back({refcnt, bytes_of(now), bytes_of(now + 1), false});
          pin.detail = {{"module", m.name}, {"refcnt", fmt::format("{:#x}", refcnt)}};
          quarantined.push_back(std::move(pin));
        }
      }
    }

    // 4. Oops bookkeeping: oops_end() set TAINT_DIE, which silences the hung-task detector
    //    (kernel/hung_task.c) for the rest of the guest's life.
    if (a.kind == "oops" || a.kind == "bug" || a.kind == "text-corruption" || a.kind == "stack-overflow") {
      std::uint64_t taint_address = kernel.symbol("tainted_mask");
      std::uint64_t taint = kernel.memory().read_u64(taint_address);
      if (taint & kTaintDie) {
        RepairAction t{"clear-taint", "TAINT_DIE would keep the hung-task detector silent", {}, {}, {}, {}};
        t.writes.push_back({taint_address, bytes_of(taint), bytes_of(taint & ~kTaintDie), false});
        bookkeeping.push_back(std::move(t));
      }
    }
  } catch (const Error& e) {
    plan.reason = std::string("no safe repair: ") + e.what();
    return plan;
  } catch (const MemoryFault& e) {
    plan.reason = std::string("no safe repair: ") + e.what();
    return plan;
  }
  return resume_with(std::move(plan), {&quarantined, &leave, &release, &end_context, &bookkeeping}, notes);
}

std::vector<std::uint8_t> bytes_from_hex(const nlohmann::json& value, std::size_t max) {
  if (!value.is_string()) fail(ExitCode::bad_input, "plan: bytes are not a hex string");
  const std::string& s = value.get_ref<const std::string&>();
  if (s.size() % 2 || s.size() / 2 > max) fail(ExitCode::bad_input, "plan: {} hex digits (at most {} bytes)", s.size(), max);
  std::vector<std::uint8_t> out(s.size() / 2);
  auto digit = [](char c) {
    int d = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
    if (d < 0) fail(ExitCode::bad_input, "plan: bad hex digit");
    return d;
  };
  for (std::size_t i = 0; i < out.size(); ++i) out[i] = static_cast<std::uint8_t>(digit(s[2 * i]) << 4 | digit(s[2 * i + 1]));
  return out;
}

RepairPlan plan_from_json(const nlohmann::json& j) {
  if (!j.is_object()) fail(ExitCode::bad_input, "plan: not an object");
  auto get = [](const nlohmann::json& o, const char* key) -> const nlohmann::json& {
    auto it = o.find(key);
    if (it == o.end()) fail(ExitCode::bad_input, "plan: no {}", key);
    return *it;
  };
  auto text = [&](const nlohmann::json& o, const char* key) {
    const auto& v = get(o, key);
    if (!v.is_string()) fail(ExitCode::bad_input, "plan: {} is not text", key);
    return v.get<std::string>().substr(0, 4096);
  };
  RepairPlan plan;
  if (!get(j, "resume").is_boolean() || !get(j, "vcpu").is_number_integer() || !get(j, "actions").is_array())
    fail(ExitCode::bad_input, "plan: resume, vcpu or actions malformed");
  plan.resume = j["resume"].get<bool>();
  plan.reason = text(j, "reason");
  std::int64_t vcpu = j["vcpu"].get<std::int64_t>();
  if (vcpu < -1 || vcpu >= static_cast<std::int64_t>(kMaxVcpus)) fail(ExitCode::bad_input, "plan: vCPU {}", vcpu);
  plan.vcpu = static_cast<int>(vcpu);
  if (j["actions"].size() > kMaxPlanActions) fail(ExitCode::bad_input, "plan: {} actions", j["actions"].size());
  for (const auto& a : j["actions"]) {
    if (!a.is_object()) fail(ExitCode::bad_input, "plan: an action is not an object");
    RepairAction action{text(a, "action"), text(a, "reason"), {}, {}, a.value("detail", nlohmann::json::object()), {}};
    if (action.detail.is_null()) action.detail = nlohmann::json::object();
    if (!action.detail.is_object()) fail(ExitCode::bad_input, "plan: an action's detail is not an object");
    const auto& writes = get(a, "writes");
    const auto& regs = get(a, "registers");
    if (!writes.is_array() || writes.size() > kMaxActionWrites || !regs.is_array() || regs.size() > 64)
      fail(ExitCode::bad_input, "plan: {}: bad writes or registers", action.kind);
    for (const auto& w : writes) {
      if (!w.is_object() || !get(w, "code").is_boolean()) fail(ExitCode::bad_input, "plan: a malformed write");
      MemoryWrite mw{parse_hex(get(w, "address"), "a write's address"), bytes_from_hex(get(w, "old"), kMaxWriteBytes),
                     bytes_from_hex(get(w, "new"), kMaxWriteBytes), w["code"].get<bool>()};
      action.writes.push_back(std::move(mw));
    }
    for (const auto& r : regs) {
      if (!r.is_object()) fail(ExitCode::bad_input, "plan: a malformed register change");
      action.registers.push_back({text(r, "register"), parse_hex(get(r, "old"), "a register's old value"),
                                  parse_hex(get(r, "new"), "a register's new value")});
    }
    if (auto calls = a.find("calls"); calls != a.end()) {
      if (!calls->is_array() || calls->size() > kMaxActionCalls) fail(ExitCode::bad_input, "plan: {}: bad calls", action.kind);
      for (const auto& c : *calls) {
        if (!c.is_object() || !get(c, "args").is_array() || c["args"].size() > kMaxCallArgs)
          fail(ExitCode::bad_input, "plan: a malformed call");
        GuestCall call{text(c, "function"), parse_hex(get(c, "address"), "a call's function"), {}};
        for (const auto& arg : c["args"]) call.args.push_back(parse_hex(arg, "a call's argument"));
        action.calls.push_back(std::move(call));
      }
    }
    plan.actions.push_back(std::move(action));
  }
  return plan;
}

nlohmann::json RepairPlan::to_json() const {
  nlohmann::json acts = nlohmann::json::array();
  for (const auto& x : actions) {
    nlohmann::json writes = nlohmann::json::array(), regs = nlohmann::json::array();
    for (const auto& w : x.writes)
      writes.push_back({{"address", fmt::format("{:#x}", w.address)}, {"old", hex_bytes(w.expected)}, {"new", hex_bytes(w.bytes)},
                        {"code", w.code}});
    for (const auto& r : x.registers)
      regs.push_back({{"register", r.name}, {"old", fmt::format("{:#x}", r.from)}, {"new", fmt::format("{:#x}", r.to)}});
    nlohmann::json calls = nlohmann::json::array();
    for (const auto& c : x.calls) {
      nlohmann::json args = nlohmann::json::array();
      for (auto v : c.args) args.push_back(fmt::format("{:#x}", v));
      calls.push_back({{"function", c.function}, {"address", fmt::format("{:#x}", c.address)}, {"args", args}});
    }
    acts.push_back({{"action", x.kind}, {"reason", x.reason}, {"writes", writes}, {"registers", regs}, {"detail", x.detail},
                    {"calls", calls}});
  }
  return {{"resume", resume}, {"reason", reason}, {"vcpu", vcpu}, {"actions", acts}};
}

}  // namespace immortal::repair
