#include "kernel/kernel_support.h"

#include <fmt/format.h>

namespace immortal {

namespace {

// The first of the named fields the structure lacks ("" when it has them all).
std::string lacks(const TypeInfo& t, const std::string& type, std::initializer_list<const char*> fields) {
  if (!t.struct_size(type)) return "no struct " + type;
  for (const char* f : fields)
    if (!t.field(type, f)) return fmt::format("struct {} has no {}", type, f);
  return "";
}

std::string lacks_symbols(const SymbolTable& s, std::initializer_list<const char*> names) {
  for (const char* n : names)
    if (!s.address_of(n)) return fmt::format("no symbol {}", n);
  return "";
}

}  // namespace

bool KernelSupport::complete() const {
  for (const auto& p : pieces)
    if (!p.missing.empty()) return false;
  return true;
}

std::vector<std::string> KernelSupport::missing() const {
  std::vector<std::string> out;
  for (const auto& p : pieces)
    if (!p.missing.empty()) out.push_back(p.name + ": " + p.missing);
  return out;
}

std::string KernelSupport::summary() const {
  std::string out;
  for (const auto& p : pieces) {
    if (!out.empty()) out += ", ";
    out += p.name;
    if (!p.how.empty()) out += " (" + p.how + ")";
    if (!p.missing.empty()) out += " NOT UNDERSTOOD";
  }
  return out;
}

KernelSupport check_kernel_support(const Kernel& kernel) {
  const auto& t = kernel.types();
  const auto& s = kernel.symbols();
  KernelSupport k;
  auto add = [&](std::string name, std::string how, std::string missing) {
    k.pieces.push_back({std::move(name), std::move(how), std::move(missing)});
  };

  std::string tasks = lacks(t, "task_struct", {"pid", "tgid", "comm", "tasks", "flags", "stack"});
  if (tasks.empty() && !t.field("task_struct", "__state") && !t.field("task_struct", "state"))
    tasks = "struct task_struct has neither __state nor state";
  if (tasks.empty()) tasks = lacks_symbols(s, {"init_task"});
  add("tasks", "", tasks);

  // 6.1: per-CPU variables of their own; 6.2 on: fields of struct pcpu_hot (Kernel aliases them).
  std::string percpu;
  if (!s.percpu_offset("current_task")) percpu = "no per-CPU current_task (nor pcpu_hot.current_task)";
  else if (!s.percpu_offset("__preempt_count")) percpu = "no per-CPU __preempt_count (nor pcpu_hot.preempt_count)";
  else if (!s.address_of("__per_cpu_offset")) percpu = "no symbol __per_cpu_offset";
  add("per-CPU data", s.percpu_offset("pcpu_hot") ? "pcpu_hot" : "", percpu);

  if (t.field("module", "core_layout.base"))
    add("modules", "core_layout", lacks_symbols(s, {"modules"}));
  else if (t.field("module", "mem"))
    add("modules", "mem[]", [&] {
      std::string m = lacks(t, "module_memory", {"base", "size"});
      return m.empty() ? lacks_symbols(s, {"modules"}) : m;
    }());
  else
    add("modules", "", "struct module has neither core_layout (6.1) nor mem[] (6.4 on)");

  std::string log = lacks(t, "printk_ringbuffer", {"desc_ring", "text_data_ring"});
  if (log.empty()) log = lacks(t, "prb_desc_ring", {"count_bits", "descs", "infos", "head_id", "tail_id"});
  if (log.empty()) log = lacks(t, "printk_info", {"seq", "ts_nsec", "text_len"});
  if (log.empty()) log = lacks_symbols(s, {"prb"});
  add("kernel log", "", log);

  std::string orc = lacks_symbols(s, {"__start_orc_unwind_ip", "__stop_orc_unwind_ip", "__start_orc_unwind"});
  std::string orc_how;
  if (orc.empty()) {
    if (t.field("orc_entry", "signal")) orc_how = "6.4 layout";
    else if (t.field("orc_entry", "end")) orc_how = "6.1 layout";
    else orc = "struct orc_entry is not in the kernel's BTF (its layout cannot be told)";
  }
  add("ORC unwinding", orc_how, orc);

  add("locks", "", [&] {
    std::string l = lacks(t, "mutex", {"owner", "wait_list"});
    if (l.empty()) l = lacks(t, "rw_semaphore", {"owner", "count"});
    return l;
  }());

  add("recovery moves", "",
      lacks_symbols(s, {"panic", "oops_end", "rewind_stack_and_make_dead", "tainted_mask", "panic_on_oops"}));
  return k;
}

}  // namespace immortal
