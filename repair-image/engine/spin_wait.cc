#include "engine/spin_wait.h"

#include "base/error.h"
#include "engine/crash_analysis.h"
#include "engine/dispatchers.h"
#include "engine/lock_calls.h"
#include "kernel/printk.h"
#include "kernel/taint.h"
#include "x86_64/code_decoder.h"
#include "x86_64/control_flow.h"

#include <fmt/format.h>

#include <set>

namespace immortal::repair {

namespace {

constexpr std::uint64_t kMaxSlowPathBytes = 4096;

std::string join(const std::vector<int>& pids) {
  std::string out;
  for (int p : pids) out += (out.empty() ? "" : ", ") + std::to_string(p);
  return out;
}

// Every other CPU's preemption count: a CPU that holds a spinlock runs with preemption disabled.
void read_other_cpus(const Kernel& kernel, const CrashRecord& record, SpinWait& w) {
  const auto& symbols = kernel.symbols();
  auto preempt = symbols.percpu_offset("__preempt_count"), current = symbols.percpu_offset("current_task");
  if (!preempt || !current) {
    w.others = "the other CPUs' preemption counts cannot be found (no __preempt_count or current_task)";
    return;
  }
  std::uint64_t pid_at = kernel.types().offset_of("task_struct", "pid");
  std::size_t others = 0;
  for (std::size_t v = 0; v < record.registers.size(); ++v) {
    if (static_cast<int>(v) == record.vcpu) continue;
    try {
      std::uint64_t base = percpu_base(kernel, record.registers[v], static_cast<int>(v));
      std::uint32_t count = kernel.memory().read_value<std::uint32_t>(base + *preempt) & ~kPreemptNeedResched;
      std::uint64_t task = kernel.memory().read_u64(base + *current);
      int pid = kernel.memory().read_value<std::int32_t>(task + pid_at);
      ++others;
      // Taking any spinlock raises the preemption level (the count's low byte), in whatever
      // context: interrupt and softirq levels alone hold none. The idle loop runs at level 1.
      if ((count & kPreemptMask) > (pid == 0 ? 1u : 0u)) {
        w.others = fmt::format("CPU {} runs {} with preemption count {:#x}: it may hold the lock", v,
                               pid == 0 ? std::string("its idle task") : fmt::format("pid {}", pid), count);
        return;
      }
    } catch (const MemoryFault& e) {
      w.others = fmt::format("CPU {}'s preemption count is unreadable: {}", v, e.what());
      return;
    }
  }
  w.others_clear = true;
  w.others = others == 0 ? "no other CPU"
                         : fmt::format("{} other CPU{} hold{} no spinlock (preemption level 0, or the idle loop's 1)",
                                       others, others == 1 ? "" : "s", others == 1 ? "s" : "");
}

// The tasks the kernel reported sleeping or dying with a spinlock held. Only a complete log
// (its first record still there) or a taint that says no such report was ever made rules any out.
void read_log_evidence(const Kernel& kernel, SpinWait& w) {
  std::uint64_t taint = 0;
  try {
    taint = read_taint_mask(kernel);
  } catch (const std::exception&) {
    taint = ~0ull;
  }
  KernelLog log;
  try {
    log = read_kernel_log(kernel);  // bounded: masked indexes, at most the ring's records
  } catch (const std::exception& e) {
    w.log_evidence = std::string("the kernel log is unreadable: ") + e.what();
  }
  std::vector<int> pids;
  for (const auto& r : log.records)
    if (auto pid = left_holding_pid(r.text)) pids.push_back(*pid);
  // Complete: every record since boot is there (sequence numbers 0, 1, 2 … with no gap).
  bool complete = !log.records.empty();
  for (std::size_t i = 0; i < log.records.size() && complete; ++i) complete = log.records[i].seq == i;
  if (complete) {
    w.left_holding = pids;
    w.log_evidence = fmt::format("the kernel log, complete since boot ({} records)", log.records.size());
  } else if (!(taint & (kTaintWarn | kTaintDie))) {
    w.left_holding = pids;
    w.log_evidence = "the kernel's taint: no warning (scheduling while atomic) or oops (a task dying) since boot";
  } else if (w.log_evidence.empty()) {
    w.log_evidence = fmt::format("the kernel log is not complete since boot (its first record is number {}) and its "
                                 "taint ({}) says a warning or oops was reported", log.records.empty() ? 0 : log.records.front().seq,
                                 taint_string(taint));
  }
}

}  // namespace

bool spinlock_slow_path(const std::string& function) {
  std::string f = base_function_name(function);
  return f == "native_queued_spin_lock_slowpath" || f == "queued_spin_lock_slowpath";
}

bool spinlock_entry(const std::string& function) {
  const LockFunction* f = lock_function_named(base_function_name(function));
  return f && f->type == LockType::spinlock && !f->release;
}

std::optional<int> left_holding_pid(const std::string& line) {
  auto number = [](const std::string& s) -> std::optional<int> {
    if (s.empty() || s.size() > 9 || s.find_first_not_of("0123456789") != std::string::npos) return std::nullopt;
    return std::stoi(s);
  };
  // kernel/sched/core.c __schedule_bug(): "BUG: scheduling while atomic: %s/%d/0x%08x"
  constexpr std::string_view atomic = "BUG: scheduling while atomic: ";
  if (auto at = line.find(atomic); at != std::string::npos) {
    std::string rest = line.substr(at + atomic.size());
    auto last = rest.rfind('/');
    if (last == std::string::npos || last == 0) return std::nullopt;
    auto before = rest.rfind('/', last - 1);
    if (before == std::string::npos) return std::nullopt;
    return number(rest.substr(before + 1, last - before - 1));
  }
  // kernel/exit.c make_task_dead(): "note: %s[%d] exited with preempt_count %d"
  constexpr std::string_view exited = "] exited with preempt_count";
  if (auto end = line.find(exited); end != std::string::npos && line.find("note: ") != std::string::npos) {
    auto open = line.rfind('[', end);
    if (open == std::string::npos) return std::nullopt;
    return number(line.substr(open + 1, end - open - 1));
  }
  return std::nullopt;
}

std::optional<SpinWait> find_spin_wait(const Kernel& kernel, const CrashRecord& record, const CrashAnalysis& a,
                                       const std::string& function, std::string* why) {
  const auto& symbols = kernel.symbols();
  const auto& mem = kernel.memory();
  auto refuse = [&](std::string reason) -> std::optional<SpinWait> {
    *why = fmt::format("the stuck task waits in the kernel's spinlock code ({}): {}", function, reason);
    return std::nullopt;
  };
  auto s = symbols.lookup(a.fault_pc);
  if (!s) return refuse("no symbol for where it was stopped");
  std::vector<std::uint8_t> code;
  try {
    code = function_code(kernel, *s, kMaxSlowPathBytes);
  } catch (const MemoryFault& e) {
    return refuse(std::string("its code is unreadable: ") + e.what());
  }
  // The loop it spins in, and the one word that loop polls.
  std::vector<Instruction> insns = decode_code(code, s->address);
  ControlFlow flow(insns);
  int here = flow.at(a.fault_pc);
  if (!flow.exact() || here < 0) return refuse("its paths cannot all be followed");
  std::vector<bool> loop = flow.loop_through(here);
  std::optional<Instruction::Memory> polled;
  for (std::size_t i = 0; i < insns.size(); ++i) {
    if (!loop[i]) continue;
    const Instruction& in = insns[i];
    if (in.kind == Instruction::Kind::call || in.kind == Instruction::Kind::ret || in.other_memory)
      return refuse("the loop it was stopped in does more than poll one word");
    if (!in.memory) continue;
    if (polled && (polled->base != in.memory->base || polled->displacement != in.memory->displacement))
      return refuse("the loop it was stopped in reads more than one word (it is queued on the lock)");
    polled = in.memory;
  }
  if (!polled || polled->base == 4) return refuse("it was not stopped in a loop polling the lock");
  for (std::size_t i = 0; i < insns.size(); ++i)
    if (loop[i] && (insns[i].writes & (1u << polled->base))) return refuse("the loop changes the pointer it polls");
  const std::uint64_t* base = a.fault_registers.field(register_name(polled->base));
  if (!base) return refuse("the polled register is unknown");
  SpinWait w;
  w.lock = *base + static_cast<std::uint64_t>(polled->displacement);
  w.polled_by = fmt::format("{} polls {:#x}(%{})", base_function_name(function), polled->displacement, register_name(polled->base));
  if (w.lock < kKernelSpaceStart || w.lock % 4) return refuse(fmt::format("the word it polls ({:#x}) is no spinlock", w.lock));
  try {
    w.word = mem.read_value<std::uint32_t>(w.lock);
  } catch (const MemoryFault& e) {
    return refuse(std::string("the lock it polls is unreadable: ") + e.what());
  }
  if (!(w.word & kQspinLockedMask)) return refuse(fmt::format("the lock it polls is free (word {:#x})", w.word));
  if (w.word & ~kQspinLockedMask)
    return refuse(fmt::format("CPUs are pending or queued on the lock (word {:#x}): ending one would break its queue",
                              w.word));
  // Not begun to queue: its CPU's MCS nodes (kernel/locking/qspinlock.c qnodes) are unused.
  try {
    auto qnodes = symbols.percpu_offset("qnodes");
    if (!qnodes) return refuse("the CPU's MCS queue nodes (qnodes) cannot be found");
    std::uint64_t count_at = a.percpu_base + *qnodes + kernel.types().offset_of("mcs_spinlock", "count");
    if (std::uint32_t n = mem.read_value<std::uint32_t>(count_at); n != 0)
      return refuse(fmt::format("its CPU has {} MCS queue node{} in use", n, n == 1 ? "" : "s"));
  } catch (const MemoryFault& e) {
    return refuse(std::string("the CPU's MCS queue nodes are unreadable: ") + e.what());
  } catch (const Error& e) {
    return refuse(std::string("the CPU's MCS queue nodes cannot be read: ") + e.what());
  }
  try {
    read_other_cpus(kernel, record, w);
  } catch (const std::exception& e) {
    w.others_clear = false;
    w.others = std::string("the other CPUs' preemption counts cannot be read: ") + e.what();
  }
  read_log_evidence(kernel, w);
  return w;
}

std::optional<std::uint32_t> spin_wait_holder(const SpinWait& wait, int pid, std::uint32_t unexplained_levels,
                                              std::string* why) {
  if (!wait.others_clear) {
    *why = wait.others;
    return std::nullopt;
  }
  if (!wait.left_holding) {
    *why = "a task that slept or died holding it cannot be ruled out: " + wait.log_evidence;
    return std::nullopt;
  }
  std::vector<int> others;
  bool self = false;
  for (int p : std::set<int>(wait.left_holding->begin(), wait.left_holding->end())) {
    if (p == pid)
      self = true;
    else
      others.push_back(p);
  }
  if (!others.empty()) {
    *why = fmt::format("the kernel reported task{} {} sleeping or dying with a spinlock held: {} may hold it",
                       others.size() == 1 ? "" : "s", join(others), others.size() == 1 ? "it" : "any of them");
    return std::nullopt;
  }
  if (unexplained_levels == 1) return 1;  // its own CPU still holds it (taken in an earlier call)
  if (unexplained_levels == 0 && self) return 0;  // it slept holding it: sleeping reset its count
  *why = fmt::format("no running code holds it: the crashing CPU's preemption count leaves {} level{} unexplained and "
                     "no task was reported sleeping with a spinlock held ({})", unexplained_levels,
                     unexplained_levels == 1 ? "" : "s", wait.log_evidence);
  return std::nullopt;
}

nlohmann::json SpinWait::to_json() const {
  nlohmann::json j = {{"lock", fmt::format("{:#x}", lock)}, {"word", fmt::format("{:#x}", word)},
                      {"polled_by", polled_by}, {"other_cpus", others}, {"others_clear", others_clear},
                      {"log_evidence", log_evidence}};
  j["left_holding"] = left_holding ? nlohmann::json(*left_holding) : nlohmann::json(nullptr);
  return j;
}

}  // namespace immortal::repair
