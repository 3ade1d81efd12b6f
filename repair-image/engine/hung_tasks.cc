#include "engine/hung_tasks.h"

#include "base/error.h"
#include "engine/crash_analysis.h"
#include "engine/dispatchers.h"
#include "engine/lock_calls.h"
#include "engine/repair_plan.h"
#include "kernel/lock_waiters.h"
#include "kernel/modules.h"
#include "kernel/orc_unwind.h"
#include "kernel/tasks.h"
#include "x86_64/code_decoder.h"

#include <fmt/format.h>

#include <algorithm>
#include <cstring>
#include <map>
#include <optional>
#include <set>

namespace immortal::repair {

namespace {

constexpr std::size_t kMaxTasks = 1 << 16;
constexpr std::size_t kMaxQueueWalk = 256;
constexpr std::size_t kMaxCodeBytes = 8192;

bool aligned_kernel_pointer(std::uint64_t v) { return kernel_pointer(v) && (v & 7) == 0; }

// khungtaskd's loop without the panic: in the function that called panic() (or its parent,
// when the call is in its .cold part), `cmpb $0x0,hung_task_call_panic(%rip)` followed by
// `je TARGET`: TARGET is where it goes on when hung_task_panic is 0.
std::uint64_t detector_resume_point(const Kernel& kernel, const Symbol& caller, std::uint64_t flag) {
  const auto& symbols = kernel.symbols();
  std::vector<Symbol> parts{caller};
  if (auto dot = caller.name().find(".cold"); dot != std::string::npos)
    if (auto parent = symbols.address_in(caller.name().substr(0, dot), caller.module()))
      if (auto p = symbols.lookup(*parent)) parts = {*p};
  for (const Symbol& part : parts) {
    std::vector<std::uint8_t> code = function_code(kernel, part, kMaxCodeBytes);
    std::vector<Instruction> insns = decode_code(code, part.address);
    for (std::size_t i = 0; i + 1 < insns.size(); ++i) {
      const Instruction& c = insns[i];
      std::uint64_t at = c.address - part.address;
      if (c.size != 7 || code[at] != 0x80 || code[at + 1] != 0x3d || code[at + 6] != 0) continue;
      std::int32_t disp;
      std::memcpy(&disp, &code[at + 2], 4);
      if (c.address + 7 + static_cast<std::uint64_t>(static_cast<std::int64_t>(disp)) != flag) continue;
      const Instruction& j = insns[i + 1];
      std::uint64_t jat = j.address - part.address;
      bool je = j.kind == Instruction::Kind::conditional_jump && j.target &&
                (code[jat] == 0x74 || (code[jat] == 0x0f && jat + 1 < code.size() && code[jat + 1] == 0x84));
      if (je) return *j.target;
    }
  }
  return 0;
}

class Finder {
 public:
  Finder(const Kernel& kernel, const CrashAnalysis& a, const X86Registers& regs)
      : kernel_(kernel), mem_(kernel.memory()), types_(kernel.types()), a_(a), regs_(regs) {}
  HungTaskSearch run();

 private:
  bool hung(std::uint64_t task, std::uint64_t jiffies, std::uint64_t limit) const;
  void describe_task(HungTask& h);
  void culprit(HungTask& h);
  void links(HungTask& h, std::uint64_t low, std::uint64_t high);
  std::uint64_t queue_head(std::uint64_t node, std::uint64_t low, std::uint64_t high, bool simple) const;

  const Kernel& kernel_;
  const KernelMemory& mem_;
  const TypeInfo& types_;
  const CrashAnalysis& a_;
  const X86Registers& regs_;
  ModuleList modules_;
  HungTaskSearch out_;
};

bool Finder::hung(std::uint64_t task, std::uint64_t jiffies, std::uint64_t limit) const {
  auto get = [&](const char* field) { return mem_.read_u64(task + types_.offset_of("task_struct", field)); };
  auto state = mem_.read_value<std::uint32_t>(task + types_.offset_of("task_struct", "__state"));
  if (state != kTaskUninterruptible || mem_.read_value<std::int32_t>(task + types_.offset_of("task_struct", "on_cpu")))
    return false;
  std::uint64_t switches = get("nvcsw") + get("nivcsw");
  // As check_hung_task() decides (kernel/hung_task.c): not scheduled since the last check, and
  // that for the timeout.
  return switches && switches == get("last_switch_count") && jiffies - get("last_switch_time") >= limit;
}

// Where a task sleeps: the registers __switch_to_asm saved on its stack (struct
// inactive_task_frame at thread.sp), unwound from there.
void Finder::describe_task(HungTask& h) {
  h.sleep_registers = sleeping_registers(kernel_, h.task, kThreadSize, &h.stack);
  h.backtrace = OrcUnwinder(kernel_).unwind(h.sleep_registers);
  const auto& symbols = kernel_.symbols();
  const auto& frames = h.backtrace.frames;
  auto module_of = [&](std::size_t i) {
    std::uint64_t pc = i == 0 ? frames[i].pc : frames[i].pc - 1;
    for (const auto& m : modules_.modules)
      if (m.contains_text(pc)) return m.name;
    return std::string();
  };
  for (std::size_t i = 0; i < frames.size(); ++i) {
    auto s = symbols.lookup(i == 0 ? frames[i].pc : frames[i].pc - 1);
    if (h.schedule_frame < 0 && s && s->module().empty() && base_function_name(s->name()) == "schedule")
      h.schedule_frame = static_cast<int>(i);
    if (h.module_frame < 0 && !module_of(i).empty()) {
      h.module_frame = static_cast<int>(i);
      h.module = module_of(i);
      h.function = symbols.describe_return(frames[i].pc);
    }
  }
  if (h.module_frame < 0) return;
  auto e = static_cast<std::size_t>(h.module_frame);
  while (e + 1 < frames.size() && !frames[e + 1].regs && module_of(e + 1) == h.module) ++e;
  h.entry_frame = static_cast<int>(e);
  if (e + 1 < frames.size())
    if (auto s = symbols.lookup(frames[e + 1].pc - 1)) h.entry_caller = base_function_name(s->name());
}

std::uint64_t Finder::queue_head(std::uint64_t node, std::uint64_t low, std::uint64_t high, bool simple) const {
  // Around the ring to the node that is no entry: an entry's `func` (wait_queue_entry) is code,
  // its `task` (swait_queue) is a task; the head's lock word before its list is neither.
  std::uint64_t entry_off = simple ? types_.offset_of("swait_queue", "task_list") : types_.offset_of("wait_queue_entry", "entry");
  std::uint64_t at = mem_.read_u64(node);
  for (std::size_t n = 0; n < kMaxQueueWalk && at != node; ++n) {
    if (!aligned_kernel_pointer(at)) return 0;
    bool entry = false;
    if (at >= low && at < high) {
      entry = true;  // on this stack: one of its own
    } else if (simple) {
      entry = aligned_kernel_pointer(mem_.read_u64(at - entry_off + types_.offset_of("swait_queue", "task")));
    } else {
      entry = kernel_.symbols().is_text(mem_.read_u64(at - entry_off + types_.offset_of("wait_queue_entry", "func")));
    }
    if (!entry) {
      std::uint64_t head_off = simple ? types_.offset_of("swait_queue_head", "task_list") : types_.offset_of("wait_queue_head", "head");
      return at - head_off;
    }
    at = mem_.read_u64(at);
  }
  return 0;
}

// The objects in [low, high) — the frames above schedule(), which will never run again — that
// are linked into something off the stack.
void Finder::links(HungTask& h, std::uint64_t low, std::uint64_t high) {
  const auto& symbols = kernel_.symbols();
  std::uint64_t wq_entry = types_.offset_of("wait_queue_entry", "entry");
  std::uint64_t wq_private = types_.offset_of("wait_queue_entry", "private");
  std::uint64_t wq_func = types_.offset_of("wait_queue_entry", "func");
  std::uint64_t sw_list = types_.offset_of("swait_queue", "task_list");
  std::uint64_t sw_task = types_.offset_of("swait_queue", "task");
  std::uint64_t timer_entry = types_.offset_of("timer_list", "entry");
  std::uint64_t timer_fn = types_.offset_of("timer_list", "function");
  std::uint64_t hr_fn = types_.offset_of("hrtimer", "function");
  std::uint64_t hr_state = types_.offset_of("hrtimer", "state");
  auto hrtimer_wakeup = symbols.address_of("hrtimer_wakeup");
  std::vector<std::uint64_t> words((high - low) / 8);
  mem_.read(low, std::as_writable_bytes(std::span(words)));
  auto outside = [&](std::uint64_t v) { return v < low || v >= high; };
  std::set<std::uint64_t> seen;
  auto add = [&](StackLink l) {
    if (seen.insert(l.object).second) h.links.push_back(std::move(l));
  };
  // Stack words are anything: a pointer that leads nowhere is not a link.
  auto peek = [&](std::uint64_t address) -> std::optional<std::uint64_t> {
    try {
      return mem_.read_u64(address);
    } catch (const MemoryFault&) {
      return std::nullopt;
    }
  };
  for (std::size_t i = 0; i + 1 < words.size(); ++i) {
    std::uint64_t at = low + 8 * i, next = words[i], prev = words[i + 1];
    // An hrtimer sleeper (schedule_hrtimeout, usleep_range): its function is hrtimer_wakeup.
    if (hrtimer_wakeup && next == *hrtimer_wakeup && at >= low + hr_fn) {
      std::uint64_t timer = at - hr_fn;
      if (peek(timer + hr_state).value_or(0) & 1)  // HRTIMER_STATE_ENQUEUED
        add({"hrtimer", timer, 0, "hrtimer_cancel"});
      continue;
    }
    // A list node ({next, prev}, both pointing back) or an hlist node ({next, pprev}: *pprev
    // is this node) that reaches off the stack.
    if (!aligned_kernel_pointer(prev) || peek(prev) != at) continue;
    bool list = aligned_kernel_pointer(next) && next != at && peek(next + 8) == at;
    bool hlist = next == 0 || list;
    if (!(list || hlist) || !(outside(prev) || (next && outside(next)))) continue;
    if (list && at >= low + wq_entry && peek(at - wq_entry + wq_private) == h.task &&
        symbols.is_text(peek(at - wq_entry + wq_func).value_or(0))) {
      std::uint64_t head = queue_head(at, low, high, false);
      if (!head) out_.unsafe.push_back(fmt::format("the wait queue of {}'s entry at {:#x} cannot be found", h.comm, at - wq_entry));
      add({"wait-queue entry", at - wq_entry, head, "remove_wait_queue"});
    } else if (list && at >= low + sw_list && peek(at - sw_list + sw_task) == h.task) {
      std::uint64_t head = queue_head(at, low, high, true);
      if (!head) out_.unsafe.push_back(fmt::format("the simple wait queue of {}'s entry at {:#x} cannot be found", h.comm, at));
      add({"simple wait-queue entry", at - sw_list, head, "finish_swait"});
    } else if (at >= low + timer_entry && symbols.is_text(peek(at - timer_entry + timer_fn).value_or(0))) {
      // del_timer() is timer_delete() in later kernels (and Debian's 6.1 backports).
      add({"timer", at - timer_entry, 0, symbols.address_of("timer_delete") ? "timer_delete" : "del_timer"});
    } else {
      out_.unsafe.push_back(fmt::format("{} (pid {}) sleeps with an object of its stack ({:#x}) linked into {}: "
                                        "ending it would leave that pointing at a dead stack", h.comm, h.pid, at,
                                        symbols.describe(outside(prev) ? prev : next)));
    }
  }
}

void Finder::culprit(HungTask& h) {
  const auto& frames = h.backtrace.frames;
  if (h.schedule_frame < 0 || static_cast<std::size_t>(h.schedule_frame) + 1 >= frames.size())
    fail(ExitCode::bad_input, "schedule() is not on its stack");
  if (h.module_frame <= h.schedule_frame) fail(ExitCode::bad_input, "the driver's frame is not above schedule()");
  auto sf = static_cast<std::size_t>(h.schedule_frame);
  // Where the continuation's register comes back from when schedule() returns: the outermost
  // frame up to schedule() whose prologue pushed it, else the switch frame the task was
  // switched out with (__switch_to_asm restores it from there). The prologues must match the
  // stack all the way, as for any return a plan makes.
  std::map<std::string, std::uint64_t> restored_from;
  return_from_frame(kernel_, h.backtrace, 0, h.sleep_registers, sf, &restored_from);
  std::uint64_t cfa = frames[sf + 1].sp;
  h.return_slot = cfa - 8;
  h.return_address = mem_.read_u64(h.return_slot);
  std::string reg = out_.continuation_register;
  if (auto slot = restored_from.find(reg); slot != restored_from.end()) {
    h.signal_slot = slot->second;
  } else {
    std::uint64_t switch_sp = mem_.read_u64(h.task + types_.offset_of("task_struct", "thread.sp"));
    const char* field = reg == "rbx" ? "bx" : reg == "rbp" ? "bp" : reg.c_str();
    h.signal_slot = switch_sp + types_.offset_of("inactive_task_frame", field);
  }
  h.signal_slot_value = mem_.read_u64(h.signal_slot);
  links(h, cfa, h.stack + kThreadSize);
  // What it holds: the lock search of a crash, from where it sleeps (it holds no spinlock:
  // nothing may sleep holding one).
  CrashAnalysis view;
  view.context = "process";
  view.asleep = true;
  view.task = h.task;
  view.pid = h.pid;
  view.task_stack = h.stack;
  view.backtrace = h.backtrace;
  view.fault_frame = 0;
  view.fault_registers = h.sleep_registers;
  view.outer_module_frame = h.entry_frame;
  LockSearch search = find_held_locks(kernel_, view);
  for (auto& lock : search.locks)
    if (lock.ours) h.locks.push_back(std::move(lock));
  for (auto& u : search.unexplained) out_.unsafe.push_back(fmt::format("{} (pid {}): {}", h.comm, h.pid, u));
}

HungTaskSearch Finder::run() {
  const auto& symbols = kernel_.symbols();
  const auto& frames = a_.backtrace.frames;
  try {
    modules_ = read_modules(kernel_);
  } catch (const std::exception& e) {
    out_.unsafe.push_back(std::string("the module list is unreadable: ") + e.what());
    return std::move(out_);
  }
  // Where khungtaskd goes on, and how a culprit dies.
  std::optional<Symbol> caller = frames.size() >= 2 ? symbols.lookup(frames[1].pc - 1) : std::nullopt;
  auto flag = symbols.address_of("hung_task_call_panic");
  if (caller && flag) out_.detector_resume = detector_resume_point(kernel_, *caller, *flag);
  out_.detector_rsp = regs_.rsp + 8;
  if (!out_.detector_resume || frames.size() < 2 || frames[1].sp != out_.detector_rsp) {
    out_.unsafe.push_back("khungtaskd's code is not understood: where it goes on without the panic is not known");
    return std::move(out_);
  }
  std::tie(out_.continuation, out_.continuation_register) = kill_continuation(kernel_);
  if (!out_.continuation) {
    out_.unsafe.push_back("oops_end()'s call of rewind_stack_and_make_dead is not understood");
    return std::move(out_);
  }

  // The tasks khungtaskd counts as hung.
  std::uint64_t timeout = mem_.read_u64(kernel_.symbol("sysctl_hung_task_timeout_secs"));
  std::uint64_t tick = mem_.read_u64(kernel_.symbol("tick_nsec"));
  std::uint64_t hz = tick ? (1'000'000'000ull + tick / 2) / tick : 0;
  std::uint64_t jiffies = mem_.read_u64(kernel_.symbol("jiffies_64"));
  if (!timeout || !hz || hz > 10000) {
    out_.unsafe.push_back(fmt::format("the hung-task timeout ({} s) or the tick ({} ns) is not usable", timeout, tick));
    return std::move(out_);
  }
  std::vector<std::string> problems;
  for (std::uint64_t task : all_tasks(kernel_, kMaxTasks, &problems)) {
    try {
      if (!hung(task, jiffies, timeout * hz)) continue;
      if (out_.tasks.size() == kMaxHungTasks) {
        out_.unsafe.push_back(fmt::format("more than {} tasks are hung", kMaxHungTasks));
        return std::move(out_);
      }
      HungTask h;
      h.task = task;
      h.pid = mem_.read_value<std::int32_t>(task + types_.offset_of("task_struct", "pid"));
      h.comm = printable(mem_.read_cstring(task + types_.offset_of("task_struct", "comm"), 16));
      out_.tasks.push_back(std::move(h));
    } catch (const MemoryFault& e) {
      problems.push_back(fmt::format("task {:#x}: {}", task, e.what()));
    }
  }
  for (const auto& p : problems) out_.notes.push_back("task list: " + p);
  if (out_.tasks.empty()) {
    out_.unsafe.push_back("no task is hung now: what khungtaskd saw is not known");
    return std::move(out_);
  }

  // Victims wait on a lock; culprits sleep in a driver's code.
  std::map<std::uint64_t, LockWaiter> waiting;
  for (auto& w : find_lock_waiters(kernel_).waiters) waiting.emplace(w.task, w);
  std::set<std::string> culprit_modules;
  for (auto& h : out_.tasks) {
    try {
      describe_task(h);
      if (auto w = waiting.find(h.task); w != waiting.end()) {
        h.waits_on = fmt::format("{} {:#x} (owner {:#x})", to_string(w->second.kind), w->second.lock, owner_task(w->second.owner));
        continue;
      }
      if (h.module.empty()) {
        out_.unsafe.push_back(fmt::format("{} (pid {}) is hung in the kernel's own code ({}), not in a driver", h.comm, h.pid,
                                          h.backtrace.frames.empty() ? "?" : h.backtrace.frames.front().symbol));
        continue;
      }
      h.culprit = true;
      culprit_modules.insert(h.module);
      culprit(h);
    } catch (const Error& e) {
      out_.unsafe.push_back(fmt::format("{} (pid {}): {}", h.comm, h.pid, e.what()));
    } catch (const MemoryFault& e) {
      out_.unsafe.push_back(fmt::format("{} (pid {}): {}", h.comm, h.pid, e.what()));
    }
  }
  std::set<std::uint64_t> culprits;
  for (const auto& h : out_.tasks)
    if (h.culprit) culprits.insert(h.task);
  for (const auto& h : out_.tasks) {
    if (h.culprit || h.waits_on.empty()) continue;
    std::uint64_t owner = owner_task(waiting[h.task].owner);
    if (!culprits.count(owner))
      out_.unsafe.push_back(fmt::format("{} (pid {}) is hung waiting on {}, whose owner is not a task asleep in a driver",
                                        h.comm, h.pid, h.waits_on));
  }
  if (culprits.empty()) out_.unsafe.push_back("no hung task sleeps in a driver's code");
  if (culprits.size() > kMaxHungCulprits) out_.unsafe.push_back(fmt::format("{} tasks sleep in a driver", culprits.size()));
  if (culprit_modules.size() > 1) out_.unsafe.push_back("hung tasks sleep in more than one driver");
  for (const auto& h : out_.tasks) {
    if (!h.culprit) continue;
    auto flags = mem_.read_value<std::uint32_t>(h.task + types_.offset_of("task_struct", "flags"));
    if (h.pid <= 1) out_.unsafe.push_back(fmt::format("the hung task is pid {}", h.pid));
    if (flags & kPfExiting) out_.unsafe.push_back(fmt::format("{} (pid {}) was already exiting", h.comm, h.pid));
    if ((flags & kPfKthread) && h.entry_caller != "kthread")
      out_.unsafe.push_back(fmt::format("{} (pid {}) is a kernel thread the driver does not own", h.comm, h.pid));
  }
  return std::move(out_);
}

}  // namespace

nlohmann::json StackLink::to_json() const {
  nlohmann::json j = {{"kind", kind}, {"object", fmt::format("{:#x}", object)}, {"release", release}};
  if (queue) j["queue"] = fmt::format("{:#x}", queue);
  return j;
}

nlohmann::json HungTask::to_json() const {
  nlohmann::json bt = nlohmann::json::array();
  for (const auto& f : backtrace.frames) bt.push_back(f.symbol);
  nlohmann::json j = {{"pid", pid}, {"comm", comm}, {"task", fmt::format("{:#x}", task)},
                      {"role", culprit ? "culprit" : "waits on a culprit's lock"}, {"backtrace", bt}};
  if (culprit) {
    nlohmann::json l = nlohmann::json::array(), k = nlohmann::json::array();
    for (const auto& x : links) l.push_back(x.to_json());
    for (const auto& x : locks) k.push_back(x.to_json());
    j.update({{"module", module}, {"sleeps_in", function}, {"links", l}, {"locks", k}});
  } else {
    j["waits_on"] = waits_on;
  }
  return j;
}

std::pair<std::uint64_t, std::string> kill_continuation(const Kernel& kernel) {
  const auto& symbols = kernel.symbols();
  auto oops_end = symbols.address_of("oops_end");
  auto rewind = symbols.address_of("rewind_stack_and_make_dead");
  std::optional<Symbol> s = oops_end ? symbols.lookup(*oops_end) : std::nullopt;
  if (!s || !rewind) return {0, ""};
  std::vector<std::uint8_t> code;
  try {
    code = function_code(kernel, *s, kMaxCodeBytes);
  } catch (const MemoryFault&) {
    return {0, ""};
  }
  std::vector<Instruction> insns = decode_code(code, s->address);
  for (std::size_t i = 1; i < insns.size(); ++i) {
    if (insns[i].kind != Instruction::Kind::call || insns[i].target != *rewind) continue;
    const Instruction& mov = insns[i - 1];
    std::uint64_t at = mov.address - s->address;
    std::size_t k = at;
    bool rex_r = false;
    if (mov.size == 3 && code[k] == 0x44) rex_r = true, ++k;
    else if (mov.size != 2) continue;
    std::uint8_t modrm = code[k + 1];
    if (code[k] != 0x89 || (modrm >> 6) != 3 || (modrm & 7) != 7) continue;  // mov %r32,%edi
    int reg = ((modrm >> 3) & 7) + (rex_r ? 8 : 0);
    if (!callee_saved(reg)) continue;  // rbx, rbp, r12–r15
    return {mov.address, register_name(reg)};
  }
  return {0, ""};
}

HungTaskSearch find_hung_tasks(const Kernel& kernel, const CrashAnalysis& analysis, const X86Registers& registers) {
  try {
    return Finder(kernel, analysis, registers).run();
  } catch (const Error& e) {
    HungTaskSearch s;
    s.unsafe.push_back(std::string("the hung tasks cannot be searched: ") + e.what());
    return s;
  } catch (const MemoryFault& e) {
    HungTaskSearch s;
    s.unsafe.push_back(std::string("the hung tasks cannot be searched: ") + e.what());
    return s;
  }
}

}  // namespace immortal::repair
