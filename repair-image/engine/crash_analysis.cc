#include "engine/crash_analysis.h"

#include "base/error.h"
#include "engine/dispatchers.h"
#include "engine/healthy_image.h"
#include "engine/kernel_checks.h"
#include "kernel/modules.h"
#include "kernel/orc_unwind.h"
#include "kernel/printk.h"
#include "kernel/tasks.h"

#include <fmt/format.h>

#include <algorithm>
#include <set>

namespace immortal::repair {

namespace {

constexpr std::size_t kMaxMessage = 256;
// Back from the newest record: an oops report (header, registers, modules, a deep call trace)
// is about a hundred lines; this leaves room for other CPUs' messages printed among them.
constexpr std::size_t kLogRecordsToSearch = 400;
constexpr std::size_t kLogRecordsFirst = 128;
constexpr std::uint64_t kStackRoom = 2048;  // a stack pointer this far above the stack's base has not overflowed

// The context of code running at preemption count `count` (the levels of whatever interrupted
// it taken off) on task pid with task flags `flags`.
std::string context_of(std::uint32_t count, int pid, std::uint32_t flags) {
  if (count & kNmiMask) return "nmi";
  if (count & kHardirqMask) return "hardirq";
  if (count & kSoftirqOffset) return "softirq";
  if (pid == 0) return "idle";
  if (flags & kPfKthread) return "kernel-thread";
  return "process";
}

// The name of the function containing address, without the compiler's ".cold" split suffix.
std::string function_of(const SymbolTable& symbols, std::uint64_t address, std::string* module = nullptr) {
  auto s = symbols.lookup(address);
  if (!s) return "";
  if (module) *module = s->module();
  return cold_part_parent(s->name());
}


// The header line of the last oops or warning the kernel printed, and the lines just before
// it (where "kernel BUG at" and the list-debugging reports are printed).
void read_oops_text(const Kernel& kernel, CrashAnalysis& a) {
  static const char* const kHeaders[] = {"BUG: ", "general protection fault", "divide error", "invalid opcode",
                                         "Oops:", "stack guard page", "double fault", "WARNING: "};
  KernelLog log;
  std::size_t header = 0;
  // The newest records first (a report is usually among the last hundred), the longer window only
  // when the header is not there with the lines before it: reading records is most of this step.
  for (std::size_t window : {kLogRecordsFirst, kLogRecordsToSearch}) {
    log = read_kernel_log(kernel, window);
    const auto& r = log.records;
    header = r.size();
    for (std::size_t back = 0; back < r.size() && header == r.size(); ++back) {
      const std::string& t = r[r.size() - 1 - back].text;
      for (const char* h : kHeaders)
        if (t.rfind(h, 0) == 0) header = r.size() - 1 - back;
    }
    if (header < r.size() && (header >= 4 || !log.truncated)) break;
  }
  const auto& r = log.records;
  if (header >= r.size()) return;
  // "Oops: 0002 [#1]" follows the line that says what happened ("BUG: kernel NULL pointer …").
  if (r[header].text.rfind("Oops:", 0) == 0)
    for (std::size_t k = header; k-- > 0 && header - k <= 4;)
      if (r[k].text.rfind("BUG: ", 0) == 0) {
        header = k;
        break;
      }
  a.oops_header = printable(r[header].text.substr(0, 200));
  bool bug_seen = false;
  for (std::size_t k = header >= 3 ? header - 3 : 0; k <= header; ++k) {
    if (auto at = r[k].text.find("kernel BUG at "); at != std::string::npos) {
      bug_seen = true;
      a.bug_at = printable(r[k].text.substr(at + 14, 80));  // "mm/slub.c:345!"
    }
    if (r[k].text.find(" corruption") != std::string::npos) a.corruption_reported = true;
  }
  if (a.kind == "oops" && bug_seen) a.kind = "bug";
  if (a.oops_header.rfind("invalid opcode", 0) == 0 && !bug_seen)
    a.unsafe.push_back("an invalid instruction that is not a BUG(): the code itself may be corrupted");
  bool guard = a.oops_header.find("stack guard page") != std::string::npos;
  bool double_fault = a.oops_header.rfind("double fault", 0) == 0;
  // A page fault in the guard page below a task's stack is reported as a stack overflow; with
  // the stack pointer well inside the stack it was a stray access below it (a bad pointer),
  // not an overflow: the stack is whole.
  std::uint64_t sp = a.fault_registers.rsp;
  bool stray = guard && !double_fault && a.context == "process" && a.fault_frame > 0 && a.task_stack &&
               sp >= a.task_stack + kStackRoom && sp < a.task_stack + kThreadSize;
  if (stray) {
    a.notes.push_back(fmt::format("the access hit the guard page below the task's stack while its stack pointer was "
                                  "{} bytes inside the stack: a stray access, not an overflow", sp - a.task_stack));
  } else if (guard) {
    a.kind = "stack-overflow";  // handle_stack_overflow()'s die(): judged by classify_overflow()
  } else if (double_fault) {
    a.kind = "double-fault";
    a.unsafe.push_back("a double fault that is not a stack overflow: the CPU could not deliver an exception");
  }
}

// A kernel stack overflow: the task's stack ran into its guard page (VMAP_STACK), the CPU could
// not push the page fault's frame there and raised a double fault, whose handler entered an
// NMI-like context on its own stack (irqentry_nmi_enter(): NMI and hard-interrupt levels,
// RCU's NMI nesting) and reported it. The stack above the guard page is whole: the overflowing
// code is judged like any oops at that instruction, and the double fault's levels are the
// detector's, left by the repair (leave-nmi) before the task is ended.
void classify_overflow(const Kernel& kernel, CrashAnalysis& a) {
  a.stopped_by = "the stack's guard page (VMAP_STACK)";
  const auto& frames = a.backtrace.frames;
  bool double_fault = false;
  for (std::size_t i = 1; i < frames.size() && static_cast<int>(i) <= a.fault_frame; ++i)
    if (function_of(kernel.symbols(), frames[i].pc - 1) == "exc_double_fault") double_fault = true;
  std::uint32_t count = a.preempt_count & ~kPreemptNeedResched;
  if (double_fault) {
    if ((count & kNmiMask) != kNmiOffset || (count & kHardirqMask) < kHardirqOffset) {
      a.unsafe.push_back(fmt::format("the double fault's handler is not in its own NMI-like level alone (preemption "
                                     "count {:#x})", a.preempt_count));
      return;
    }
    a.detector_levels = kNmiOffset + kHardirqOffset;
  } else if (count & kNmiMask) {
    a.unsafe.push_back("a stack overflow reported in NMI context, not through the double fault");
    return;
  }
  a.context = context_of(count - a.detector_levels, a.pid, a.task_flags);
  std::uint64_t sp = a.fault_registers.rsp;
  if (!a.task_stack || a.fault_frame <= 0 || sp + kGuardPage < a.task_stack || sp >= a.task_stack + kThreadSize) {
    a.unsafe.push_back(fmt::format("the stack pointer at the overflow ({:#x}) is not at the guard page of the task's "
                                   "stack ({:#x})", sp, a.task_stack));
    return;
  }
  if (a.context != "process" && a.context != "kernel-thread")
    a.unsafe.push_back("a stack overflow in " + a.context + " context: only a task's own overflow is ended");
  a.notes.push_back(fmt::format("the task's stack overflowed {} bytes into its guard page{}", a.task_stack > sp ? a.task_stack - sp : 0,
                                double_fault ? "; the double fault's NMI-like level is left before the task is ended" : ""));
}

// A hung task: khungtaskd is not to blame; the analysis names the culprit asleep in the driver.
void analyze_hung_tasks(const Kernel& kernel, CrashAnalysis& a, const X86Registers& regs) {
  a.notes.push_back(fmt::format("khungtaskd ({}, pid {}) panicked for the tasks it found hung", a.comm, a.pid));
  a.stopped_by = "the hung-task detector (hung_task_panic)";
  a.hung = find_hung_tasks(kernel, a, regs);
  for (const auto& u : a.hung.unsafe) a.unsafe.push_back(u);
  for (const auto& n : a.hung.notes) a.notes.push_back(n);
  for (const auto& h : a.hung.tasks) {
    if (!h.culprit) continue;
    a.task = h.task;
    a.pid = h.pid;
    a.comm = h.comm;
    a.task_stack = h.stack;
    try {
      a.task_flags = kernel.memory().read_value<std::uint32_t>(h.task + kernel.types().offset_of("task_struct", "flags"));
    } catch (const MemoryFault&) {
    }
    a.context = (a.task_flags & kPfKthread) ? "kernel-thread" : "process";
    a.module = h.module;
    a.fault_function = h.function;
    a.outer_caller = h.entry_caller;
    for (const auto& l : h.locks) a.locks.push_back(l);
    break;
  }
}

// A soft lockup's context is the stopped code's: the CPU's preemption count less the timer
// interrupt's level. The interrupt's saved registers must be the ones the kernel itself
// recorded for it (get_irq_regs(), which the watchdog's report printed).
void classify_lockup(const Kernel& kernel, CrashAnalysis& a) {
  std::uint32_t count = a.preempt_count & ~kPreemptNeedResched;
  if ((count & kHardirqMask) < kHardirqOffset || a.fault_frame < 0) {
    a.unsafe.push_back("the soft-lockup watchdog did not run in the stuck CPU's timer interrupt");
    return;
  }
  a.context = context_of(count - kHardirqOffset, a.pid, a.task_flags);
  const Frame& interrupt = a.backtrace.frames[static_cast<std::size_t>(a.fault_frame)];
  try {
    auto irq_regs = kernel.symbols().percpu_offset("__irq_regs");
    if (!irq_regs || kernel.memory().read_u64(a.percpu_base + *irq_regs) != interrupt.regs)
      a.unsafe.push_back("the timer interrupt's saved registers on the stack are not the ones the kernel recorded "
                         "(__irq_regs)");
  } catch (const MemoryFault& e) {
    a.unsafe.push_back(std::string("the timer interrupt's saved registers are unreadable: ") + e.what());
  }
  if (a.fault_registers.cs & 3) a.unsafe.push_back("the watchdog's interrupt stopped user space, not a driver");
  if (a.context == "softirq") a.unsafe.push_back("the spinning code is a softirq: ending it is not built");
}

// The NAPI instance a crashed poll was polling: among the values of the crashing path (the poll
// keeps its argument in a register or a stack slot), the one napi_struct that is scheduled and
// whose poll is the blamed module's code. None or several: not known, not resumed.
void find_napi(const Kernel& kernel, CrashAnalysis& a, const ModuleList& loaded, const std::vector<std::uint64_t>& values) {
  const auto& t = kernel.types();
  const ModuleInfo* module = nullptr;
  for (const auto& m : loaded.modules)
    if (m.name == a.module) module = &m;
  std::set<std::uint64_t> found;
  try {
    std::uint64_t poll = t.offset_of("napi_struct", "poll"), state = t.offset_of("napi_struct", "state");
    for (std::uint64_t v : values) {
      try {
        std::uint64_t fn = kernel.memory().read_u64(v + poll);
        if (module && module->contains_text(fn) && (kernel.memory().read_u64(v + state) & kNapiStateSched)) found.insert(v);
      } catch (const MemoryFault&) {
      }
    }
  } catch (const Error& e) {
    a.unsafe.push_back(std::string("the NAPI instance cannot be looked for: ") + e.what());
    return;
  }
  if (found.size() == 1) a.napi = *found.begin();
  else
    a.unsafe.push_back(fmt::format("the NAPI instance the crashed poll was polling is not known ({} candidates on the "
                                   "crashing path): it would stay scheduled for ever", found.size()));
}

}  // namespace

std::string printable(std::string_view text) {
  std::string out(text);
  for (char& c : out)
    if (c < 0x20 || c > 0x7e) c = '?';
  return out;
}

std::uint64_t percpu_base(const Kernel& kernel, const X86Registers& registers, int vcpu) {
  // In kernel mode GS points at this CPU's per-CPU area (x86-64 per-CPU symbols are offsets).
  if (registers.gs_base >= kKernelSpaceStart) return registers.gs_base;
  return kernel.memory().read_u64(kernel.symbol("__per_cpu_offset") + 8 * static_cast<std::uint64_t>(vcpu));
}

X86Registers read_pt_regs(const Kernel& kernel, std::uint64_t address) {
  const auto& t = kernel.types();
  const auto& m = kernel.memory();
  X86Registers r;
  auto get = [&](const char* field) { return m.read_u64(address + t.offset_of("pt_regs", field)); };
  r.r15 = get("r15"); r.r14 = get("r14"); r.r13 = get("r13"); r.r12 = get("r12");
  r.rbp = get("bp");  r.rbx = get("bx");  r.r11 = get("r11"); r.r10 = get("r10");
  r.r9 = get("r9");   r.r8 = get("r8");   r.rax = get("ax");  r.rcx = get("cx");
  r.rdx = get("dx");  r.rsi = get("si");  r.rdi = get("di");  r.rip = get("ip");
  r.cs = get("cs");   r.rflags = get("flags"); r.rsp = get("sp"); r.ss = get("ss");
  return r;
}

CrashAnalysis analyze_crash(const Kernel& kernel, const CrashRecord& record) {
  CrashAnalysis a;
  a.kind = "unknown";
  a.cpu = record.vcpu;
  if (record.vcpu < 0 || record.vcpu >= static_cast<int>(record.registers.size())) {
    a.unsafe.push_back("the crashing vCPU is not known");
    return a;
  }
  const auto& symbols = kernel.symbols();
  const auto& mem = kernel.memory();
  const X86Registers& regs = record.registers[static_cast<std::size_t>(record.vcpu)];
  try {
    a.percpu_base = percpu_base(kernel, regs, record.vcpu);
    auto preempt = symbols.percpu_offset("__preempt_count");
    auto current = symbols.percpu_offset("current_task");
    if (!preempt || !current) fail(ExitCode::bad_input, "the profile lacks __preempt_count or current_task");
    a.preempt_count = mem.read_value<std::uint32_t>(a.percpu_base + *preempt);
    a.task = mem.read_u64(a.percpu_base + *current);
    TaskInfo task = read_task(kernel, a.task);
    a.pid = task.pid;
    a.comm = printable(task.comm);
    a.task_flags = mem.read_value<std::uint32_t>(a.task + kernel.types().offset_of("task_struct", "flags"));
    a.task_stack = mem.read_u64(a.task + kernel.types().offset_of("task_struct", "stack"));
  } catch (const MemoryFault& e) {
    a.unsafe.push_back(std::string("the crashing CPU's task is unreadable: ") + e.what());
    return a;
  }
  a.context = context_of(a.preempt_count & ~kPreemptNeedResched, a.pid, a.task_flags);

  OrcUnwinder unwinder(kernel);
  a.backtrace = unwinder.unwind(regs);
  const auto& frames = a.backtrace.frames;

  // Which module's text an address is in, from the module list in memory (not the profile's
  // symbols: a module loaded after the profile was taken has none there, or stale ones).
  ModuleList loaded;
  try {
    loaded = read_modules(kernel);
  } catch (const std::exception& e) {
    a.notes.push_back(std::string("the module list is unreadable: ") + e.what());
  }
  auto module_at = [&](std::uint64_t pc) -> std::string {
    for (const auto& m : loaded.modules)
      if (m.contains_text(pc)) return m.name;
    std::string by_symbol;
    if (loaded.modules.empty()) function_of(symbols, pc, &by_symbol);
    return by_symbol;
  };

  if (record.intercepted_at == "panic" && frames.size() >= 2) {
    try {
      std::string format = mem.read_cstring(regs.rdi, kMaxMessage);
      while (!format.empty() && format.back() == '\n') format.pop_back();  // the line's end, not part of it
      a.message = printable(format);
    } catch (const MemoryFault&) {
      a.message = "(unreadable)";
    }
    a.panic_caller = function_of(symbols, frames[1].pc - 1);
    std::string caller_module = module_at(frames[1].pc - 1);
    auto first_regs_frame = [&]() -> int {
      for (std::size_t i = 1; i < frames.size(); ++i)
        if (frames[i].regs) return static_cast<int>(i);
      return -1;
    };
    if (a.panic_caller == "watchdog_timer_fn") {
      // A soft lockup (softlockup_panic): the watchdog's hrtimer, in the timer interrupt of the
      // stuck CPU, found that CPU's stopper thread starved. The culprit is the code that
      // interrupt stopped: its saved registers are the interrupt's frame.
      a.kind = "soft-lockup";
      a.fault_frame = first_regs_frame();
      a.detector_levels = kHardirqOffset;
      a.stopped_by = "the soft-lockup watchdog (softlockup_panic)";
    } else if ((base_function_name(a.panic_caller) == "watchdog" ||
                base_function_name(a.panic_caller) == "check_hung_uninterruptible_tasks") &&
               a.message == "hung_task: blocked tasks" && caller_module.empty()) {
      // khungtaskd (kernel/hung_task.c) with hung_task_panic; its check is inlined into its
      // thread function in Debian's 6.1.
      a.kind = "hung-task";
    } else if (a.panic_caller == "oops_end") {
      a.kind = "oops";
      a.fault_frame = first_regs_frame();
    } else if (a.panic_caller == "check_panic_on_warn") {
      a.kind = "warn";
      a.fault_frame = first_regs_frame();
    } else if (!caller_module.empty() || (kernel_check(a.panic_caller) && frames.size() >= 3)) {
      // The module called panic() itself, or a check did on its behalf (the stack protector):
      // its state at the call is what we have (panic has not run an instruction: the
      // callee-saved registers are still the caller's).
      a.kind = "panic";
      a.fault_frame = 1;
      a.fault_registers = regs;
      a.fault_registers.rip = frames[1].pc;
      a.fault_registers.rsp = frames[1].sp;
      a.fault_pc = frames[1].pc;
    } else {
      a.kind = "kernel-panic";
    }
    if (a.fault_frame > 0 && frames[static_cast<std::size_t>(a.fault_frame)].regs) {
      try {
        a.fault_registers = read_pt_regs(kernel, frames[static_cast<std::size_t>(a.fault_frame)].regs);
        a.fault_pc = a.fault_registers.rip;
      } catch (const MemoryFault& e) {
        a.unsafe.push_back(std::string("the fault's register frame is unreadable: ") + e.what());
        a.fault_frame = -1;
      }
    }
  } else if (record.intercepted_at != "panic") {
    a.unsafe.push_back("caught by " + record.caught_by + ", not at the start of a crash path");
  }
  if (a.kind == "soft-lockup") classify_lockup(kernel, a);
  if (a.kind == "hung-task") {
    analyze_hung_tasks(kernel, a, regs);
    return a;
  }
  if (a.kind == "oops" || a.kind == "warn") {
    try {
      read_oops_text(kernel, a);
    } catch (const std::exception& e) {
      a.notes.push_back(std::string("the kernel log is unreadable: ") + e.what());
    }
  }
  if (a.kind == "stack-overflow") classify_overflow(kernel, a);

  if (a.fault_frame > 0) {
    std::size_t f = static_cast<std::size_t>(a.fault_frame);
    a.fault_function = a.kind == "panic" ? symbols.describe_return(a.fault_pc) : symbols.describe(a.fault_pc);
    std::string module = module_at(a.kind == "panic" ? a.fault_pc - 1 : a.fault_pc);
    a.fault_in_module = !module.empty();
    auto kernel_text = [&](std::uint64_t pc) {
      auto lo = symbols.address_of("_stext"), hi = symbols.address_of("_etext");
      return lo && hi && pc >= *lo && pc < *hi;
    };
    if (!a.fault_in_module && !kernel_text(a.fault_pc) && a.kind != "panic") {
      // Not code at all: the driver jumped through a bad pointer (NX refused data, or NULL).
      // If it called it, the return address on the stack is the call's; unwind from there.
      try {
        std::uint64_t ret = mem.read_u64(a.fault_registers.rsp);
        if (!module_at(ret - 1).empty()) {
          X86Registers at_call = a.fault_registers;
          at_call.rip = ret;
          at_call.rsp += 8;
          Backtrace rest = unwinder.unwind(at_call);
          a.backtrace.frames.resize(f);
          for (auto& fr : rest.frames) a.backtrace.frames.push_back(fr);
          if (!a.backtrace.frames.empty() && f < a.backtrace.frames.size()) a.backtrace.frames[f].regs = 0;
          a.notes.push_back(fmt::format("the driver called {:#x}, which is not code: blamed on the call at {}", a.fault_pc,
                                        symbols.describe_return(ret)));
          a.stopped_by = "the CPU refused to execute a non-code address the driver called";
          a.fault_registers = at_call;
          a.fault_pc = ret;
          a.fault_function = symbols.describe_return(ret);
          module = module_at(ret - 1);
          a.fault_in_module = true;
          a.called_bad_pointer = true;
        }
      } catch (const MemoryFault&) {
      }
    }
    if (!a.fault_in_module) {
      // The kernel's own code faulted (or called panic); a module further up may have caused it.
      for (std::size_t i = f + 1; i < frames.size() && module.empty(); ++i) {
        module = module_at(frames[i].pc - 1);
        if (!module.empty()) f = i;
      }
      // Did the kernel stop on the driver's behalf, touching nothing? Every kernel function
      // between the fault and the driver's frame must be a check or a buffer-only library call.
      const KernelCheck* check = nullptr;
      bool all_checks = !module.empty();
      bool lockup = a.kind == "soft-lockup";
      std::string spin;  // a lockup stopped in the spinlock slow path, the driver's lock call above it
      for (std::size_t i = static_cast<std::size_t>(a.fault_frame); i < f && all_checks; ++i) {
        bool stopped_here = i == static_cast<std::size_t>(a.fault_frame);
        std::string name = function_of(symbols, stopped_here && a.kind != "panic" ? a.fault_pc : frames[i].pc - 1);
        if (lockup && (stopped_here ? spinlock_slow_path(name) : !spin.empty() && spinlock_entry(name))) {
          if (stopped_here) spin = name;
          continue;
        }
        const KernelCheck* c = lockup ? busy_wait_helper(name) : kernel_check(name);
        bool slab = name.find("kfree") != std::string::npos || name.find("kmem_cache_free") != std::string::npos ||
                    name.find("slab_free") != std::string::npos;
        if (!c || (slab && a.bug_at.rfind("mm/slub.c", 0) != 0)) all_checks = false;
        if (!check) check = c;
      }
      if (lockup && all_checks && !spin.empty()) {
        std::string why;
        if (auto wait = find_spin_wait(kernel, record, a, spin, &why)) {
          a.spin_wait = wait;
          a.notes.push_back(fmt::format("the spinning task waits for spinlock {:#x} in {} (called by module {}), with no "
                                        "place in its queue (lock word {:#x}): ending it there changes nothing in the "
                                        "lock", wait->lock, a.fault_function, module, wait->word));
        } else {
          a.unsafe.push_back(why);
        }
      } else if (lockup) {
        if (all_checks && check)
          a.notes.push_back(fmt::format("the spinning task was stopped in {} ({}), called by module {}", check->what,
                                        a.fault_function, module));
        else if (!module.empty())
          a.unsafe.push_back(fmt::format("the spinning task was stopped in the kernel's own code ({}), called by module "
                                         "{}: ended there, that code could be left half-done", a.fault_function, module));
      } else if (all_checks && check) {
        a.stopped_by = check->what;
        a.notes.push_back(fmt::format("the fault is in the kernel's {} ({}), on behalf of module {}: {}",
                                      check->library ? "library code" : "checks", a.fault_function, module, check->what));
      } else if (!module.empty()) {
        a.unsafe.push_back(fmt::format("the faulting instruction is in the kernel's own code ({}), called by "
                                       "module {}: kernel state may be inconsistent", a.fault_function, module));
      }
    }
    a.module = module;
    if (!module.empty()) {
      auto profiled = kernel.profile_module_bases().find(module);
      auto in_memory = std::find_if(loaded.modules.begin(), loaded.modules.end(),
                                    [&](const ModuleInfo& m) { return m.name == module; });
      std::string symbol_module;
      function_of(symbols, a.kind == "panic" ? a.fault_pc - 1 : a.fault_pc, &symbol_module);
      // Init code has symbols only while the module loads (read from its own table in memory).
      bool in_init = a.fault_in_module && in_memory != loaded.modules.end() &&
                     (a.fault_pc < in_memory->base || a.fault_pc - in_memory->base >= in_memory->text_size);
      a.module_symbols_stale = a.fault_in_module && in_memory != loaded.modules.end() &&
                               (symbol_module != module || profiled == kernel.profile_module_bases().end() ||
                                profiled->second != in_memory->base);
      if (kernel.modules_read_from_memory().count(module))
        a.notes.push_back("module " + module + " was loaded after the guest profile was taken: its symbols were read "
                          "from its own symbol table in guest memory");
      if (in_init) a.fault_in_init = true;
      if (in_memory != loaded.modules.end()) a.module_layout = to_json(layout_of(*in_memory));
      if (a.module_symbols_stale) {
        a.fault_function = in_init ? fmt::format("{} init code+{:#x} [{}]", module, a.fault_pc - in_memory->init_base, module)
                                : fmt::format("{}+{:#x} [{}]", module, a.fault_pc - in_memory->base, module);
        a.notes.push_back("module " + module + " was loaded after the guest profile was taken: no symbols for it");
      }
      std::size_t i = f;
      while (i + 1 < frames.size() && !frames[i + 1].regs && module_at(frames[i + 1].pc - 1) == module) ++i;
      a.outer_module_frame = static_cast<int>(i);
      if (i + 1 == frames.size() && a.backtrace.truncated)
        a.unsafe.push_back(fmt::format("the backtrace ({}) ends inside {}: the driver's entry is not known", a.backtrace.problem, module));
      if (i + 1 < frames.size()) a.outer_caller = function_of(symbols, frames[i + 1].pc - 1);
    }
  }

  if (a.corruption_reported) {
    if (a.stopped_by.find("list debugging") != std::string::npos)
      a.notes.push_back("the list the driver handed the kernel was already corrupted: the driver that owns it is quarantined");
    else
      a.unsafe.push_back("the kernel reported corrupted data (\"corruption\" in its log)");
  }

  // Context checks every recovery needs.
  if (a.kind == "kernel-panic")
    a.unsafe.push_back("the kernel itself called panic() from " + a.panic_caller + ": not a driver fault to undo");
  if (a.kind == "unknown") a.unsafe.push_back("the crash path is not one this version knows");
  // In hard-interrupt context only a call a hard-interrupt dispatcher made can be ended (an
  // hrtimer's callback, an interrupt handler the IRQ core called); not, say, the kernel's own
  // interrupt entry half-way through.
  const Dispatcher* dispatcher = dispatcher_named(a.outer_caller);
  bool hardirq_callback = a.context == "hardirq" && dispatcher && dispatcher->hard_interrupt;
  if (a.context == "nmi" || (a.context == "hardirq" && !hardirq_callback))
    a.unsafe.push_back("the crash happened in " + a.context + " context");
  if (a.context == "idle") a.unsafe.push_back("the crash happened in the idle task");
  // The task is ended only in its own context; a softirq or interrupt callback merely
  // interrupted it (an exiting task, init), and the callback is ended instead.
  bool task_context = a.context == "process" || a.context == "kernel-thread";
  if (a.pid == 1 && task_context) a.unsafe.push_back("the crashing task is init (pid 1)");
  if ((a.task_flags & kPfExiting) && task_context) a.unsafe.push_back("the crashing task was already exiting");
  if (a.module.empty() && a.unsafe.empty()) a.unsafe.push_back("no module's code is on the crashing stack");
  if (a.fault_frame < 0 && a.unsafe.empty()) a.unsafe.push_back("the registers at the fault are not known");
  if (!a.backtrace.problem.empty()) a.notes.push_back("backtrace: " + a.backtrace.problem);

  // Every lock the crash left held (held_locks.h).
  if (a.fault_frame > 0) {
    LockSearch search = find_held_locks(kernel, a);
    a.locks = std::move(search.locks);
    a.lock_search = std::move(search.stats);
    a.lock_search_ms = search.ms;
    for (auto& u : search.unexplained) a.unsafe.push_back(std::move(u));
    for (auto& n : search.notes) a.notes.push_back(std::move(n));
    ReferenceSearch refs = find_held_references(kernel, a, search.path_values);
    a.references = std::move(refs.references);
    for (auto& u : refs.unexplained) a.unsafe.push_back(std::move(u));
    if (dispatcher && std::string(dispatcher->function) == "__napi_poll") find_napi(kernel, a, loaded, search.path_values);
  }
  return a;
}

nlohmann::json CrashAnalysis::to_json() const {
  nlohmann::json frames = nlohmann::json::array();
  for (const auto& f : backtrace.frames) frames.push_back(f.symbol);
  nlohmann::json held = nlohmann::json::array();
  for (const auto& h : locks) held.push_back(h.to_json());
  nlohmann::json refs = nlohmann::json::array();
  for (const auto& r : references) refs.push_back(r.to_json());
  return {{"kind", kind}, {"context", context}, {"message", message}, {"oops", oops_header},
          {"panic_caller", panic_caller}, {"cpu", cpu}, {"preempt_count", fmt::format("{:#x}", preempt_count)},
          {"task", {{"pid", pid}, {"comm", comm}, {"address", fmt::format("{:#x}", task)}, {"flags", fmt::format("{:#x}", task_flags)}}},
          {"fault", {{"pc", fmt::format("{:#x}", fault_pc)}, {"function", fault_function}, {"in_module", fault_in_module}}},
          {"module", module}, {"module_layout", module_layout}, {"entry_caller", outer_caller}, {"stopped_by", stopped_by},
          {"entry", outer_module_frame >= 0 ? backtrace.frames[static_cast<std::size_t>(outer_module_frame)].symbol : ""},
          {"backtrace", frames}, {"backtrace_problem", backtrace.problem}, {"locks_held", held},
          {"lock_search", lock_search}, {"references_held", refs}, {"napi", napi ? fmt::format("{:#x}", napi) : ""},
          {"hung_tasks", hung_json()},
          {"spin_wait", spin_wait ? spin_wait->to_json() : nlohmann::json(nullptr)},
          {"unsafe", unsafe}, {"notes", notes}, {"percpu_base", fmt::format("{:#x}", percpu_base)},
          {"summary", summary()}};
}

nlohmann::json CrashAnalysis::hung_json() const {
  nlohmann::json out = nlohmann::json::array();
  for (const auto& h : hung.tasks) out.push_back(h.to_json());
  return out;
}

std::string CrashAnalysis::summary() const {
  std::string who = pid >= 0 ? fmt::format("{} (pid {})", comm, pid) : "unknown task";
  return fmt::format("{} in {} context on CPU {}: {} — task {}{}", kind, context, cpu,
                     fault_function.empty() ? message : fault_function, who,
                     oops_header.empty() ? "" : " — " + oops_header);
}

}  // namespace immortal::repair
