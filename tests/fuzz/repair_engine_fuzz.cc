// Fuzz target: the repair engine on a crashed, hostile kernel. A synthetic kernel whose crashing
// CPU stopped at panic(); the input supplies its stack, per-CPU area, current task, ORC tables
// and a module's code and data. analyze_crash() and plan_repair() must end, bounded, with an
// analysis and a plan (most often "reboot"), never a crash, a hang or an unbounded allocation.
#include "base/error.h"
#include "engine/crash_analysis.h"
#include "engine/repair_plan.h"
#include "kernel/lock_waiters.h"
#include "kernel/modules.h"
#include "support/fake_kernel.h"

#include <cstdint>
#include <cstring>

using namespace immortal;
using namespace immortal::test;

namespace {

// Physical regions the input fills, in this order.
struct Region {
  std::uint64_t phys, size;
};
constexpr Region kRegions[] = {
    {0x400000, 0x4000},  // the task's stack (rsp points into it)
    {0x300000, 0x1000},  // per-CPU area (gs_base)
    {0x600000, 0x400},   // the current task_struct
    {0x500000, 0x800},   // ORC: ip table then entries
    {0xc00000, 0x1000},  // module text, data, struct module
};

const char kSymbols[] =
    "0000000000000100 D __preempt_count\n"
    "0000000000000108 D current_task\n"
    "0000000000000200 d timer_bases\n"
    "0000000000000300 d qnodes\n"
    "0000000000000340 D __irq_regs\n"
    "ffffffff80100000 T oops_end\n"
    "ffffffff80100100 T panic\n"
    "ffffffff80100200 T rewind_stack_and_make_dead\n"
    "ffffffff80100300 T check_panic_on_warn\n"
    "ffffffff80100400 T ct_irq_exit\n"
    "ffffffff80100500 T _raw_spin_lock\n"
    "ffffffff80100600 T mutex_lock\n"
    "ffffffff80100700 T call_timer_fn\n"
    "ffffffff80100800 T lock_sock_nested\n"
    "ffffffff80100900 T release_sock\n"
    "ffffffff80100a00 T native_queued_spin_lock_slowpath\n"
    "ffffffff80100b00 T watchdog_timer_fn\n"
    "ffffffff80500000 D __start_orc_unwind_ip\n"
    "ffffffff80500100 D __stop_orc_unwind_ip\n"
    "ffffffff80500100 D __start_orc_unwind\n"
    "ffffffff80b00000 D modules\n"
    "ffffffff80b00100 D tainted_mask\n"
    "ffffffff80b00200 D __per_cpu_offset\n"
    "ffffffff80c00000 t fuzz_entry\t[fuzzmod]\n"
    "ffffffff80c00040 t fuzz_helper\t[fuzzmod]\n"
    "ffffffff80c00080 t fuzz_helper.cold\t[fuzzmod]\n"
    "ffffffff80c00800 d fuzz_lock\t[fuzzmod]\n"
    "ffffffff80d00000 T _etext\n";

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  static VectorMemory ram(1 << 24);
  static std::unique_ptr<Kernel> kernel = [] {
    map_kernel_image(ram);
    auto types = linux_like_types();
    types->add("task_struct", "stack", 0x30);
    types->add("task_struct", "worker_private", 0x38);
    for (auto [name, offset] : std::initializer_list<std::pair<const char*, int>>{
             {"r15", 0}, {"r14", 8}, {"r13", 16}, {"r12", 24}, {"bp", 32}, {"bx", 40}, {"r11", 48}, {"r10", 56},
             {"r9", 64}, {"r8", 72}, {"ax", 80}, {"cx", 88}, {"dx", 96}, {"si", 104}, {"di", 112}, {"orig_ax", 120},
             {"ip", 128}, {"cs", 136}, {"flags", 144}, {"sp", 152}, {"ss", 160}})
      types->add("pt_regs", name, static_cast<std::uint64_t>(offset));
    types->add("mutex", "owner", 0);
    types->add("mutex", "wait_lock", 8, 4);
    types->add("mutex", "osq", 12, 4);
    types->add("mutex", "wait_list", 16);
    // The held-lock search (held_locks.cc, lock_waiters.cc), the module's own symbol table.
    types->add("rw_semaphore", "count", 0);
    types->add("rw_semaphore", "owner", 8);
    types->add("rw_semaphore", "osq", 16, 4);
    types->add("rw_semaphore", "wait_lock", 20, 4);
    types->add("rw_semaphore", "wait_list", 24);
    types->add("semaphore", "count", 4, 4);
    types->add("semaphore", "wait_list", 8);
    types->add("task_struct", "on_cpu", 0x1c, 4);
    types->add("task_struct", "signal", 0x170);
    types->add("task_struct", "thread_node", 0x178);
    types->add("task_struct", "thread.sp", 0x1a0);
    types->add_size("task_struct", 0x300);
    types->add("signal_struct", "thread_head", 0x10);
    types->add("module", "kallsyms", 0x140);
    types->add("mod_kallsyms", "symtab", 0);
    types->add("mod_kallsyms", "num_symtab", 8, 4);
    types->add("mod_kallsyms", "strtab", 16);
    types->add("mod_kallsyms", "typetab", 24);
    types->add("timer_base", "running_timer", 0);
    types->add_size("timer_base", 0x40);
    types->add("timer_list", "function", 0x18);
    KernelLayout layout;
    layout.page_table = 0x1000;
    return Kernel::assemble(ram, layout, SymbolTable::from_kallsyms(kSymbols), std::move(types), "fuzz");
  }();
  std::size_t at = 0;
  for (const auto& r : kRegions) {
    std::vector<std::byte> zero(r.size);
    ram.write(r.phys, zero);
    std::size_t n = std::min<std::size_t>(r.size, size - at);
    ram.write(r.phys, std::as_bytes(std::span(data + at, n)));
    at += n;
  }
  // The module list: one module whose core layout covers 0xc00000.. (its struct at 0xc00c00).
  ram.put<std::uint64_t>(0xb00000, kva(0xc00c08));
  ram.put<std::uint64_t>(0xc00c08, kva(0xb00000));
  ram.put<std::uint64_t>(0xb00008, kva(0xc00c08));
  ram.put_bytes(0xc00c18, std::string("fuzzmod\0", 8));
  ram.put<std::uint64_t>(0xc00d00, kva(0xc00000));
  ram.put<std::uint32_t>(0xc00d08, 0xc00);
  ram.put<std::uint32_t>(0xc00d0c, 0x800);
  ram.put<std::uint64_t>(0xb00200, kva(0x300000));
  ram.put<std::uint64_t>(0x300108, kva(0x600000));  // current_task

  repair::CrashRecord record;
  record.id = 1;
  record.caught_by = "breakpoint";
  record.intercepted_at = "panic";
  record.vcpu = 0;
  X86Registers r;
  r.rip = kva(0x100100);
  std::uint16_t sp_offset = 0;
  if (size >= 2) std::memcpy(&sp_offset, data + size - 2, 2);
  r.rsp = kva(0x400000) + (sp_offset & 0x3ff8);
  r.gs_base = kva(0x300000);
  r.rdi = kva(0xc00800);
  record.registers = {r, r};
  record.registers[1].gs_base = 0;  // the other CPU: per-CPU base from __per_cpu_offset
  try {
    auto analysis = repair::analyze_crash(*kernel, record);
    auto plan = repair::plan_repair(*kernel, record, analysis);
    (void)plan.to_json().dump();
    // Readers the engine calls around the analysis: the module's own symbol table (a module the
    // profile does not know) and the tasks asleep on locks.
    ModuleList modules = read_modules(*kernel);
    for (const auto& m : modules.modules) (void)read_module_symbols(*kernel, m);
    (void)find_lock_waiters(*kernel, 64);
    (void)analysis.to_json().dump();
    (void)analysis.summary();
  } catch (const Error&) {
  } catch (const MemoryFault&) {
  }
  return 0;
}
