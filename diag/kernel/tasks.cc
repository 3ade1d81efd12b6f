#include "kernel/tasks.h"

#include "base/error.h"

#include <algorithm>

namespace immortal {

namespace {

constexpr std::uint32_t kPfKthread = 0x00200000;  // include/linux/sched.h PF_KTHREAD

// include/linux/sched.h task states, as fs/proc/array.c names them.
char state_letter(std::uint32_t state, std::uint32_t exit_state) {
  if (exit_state & 0x20) return 'Z';  // EXIT_ZOMBIE
  if (exit_state & 0x10) return 'X';  // EXIT_DEAD
  if (state == 0x402) return 'I';     // TASK_IDLE
  if (state == 0) return 'R';
  if (state & 0x1) return 'S';
  if (state & 0x2) return 'D';
  if (state & 0x4) return 'T';
  if (state & 0x8) return 't';
  return '?';
}

}  // namespace

TaskInfo read_task(const Kernel& kernel, std::uint64_t task) {
  const auto& m = kernel.memory();
  const auto& t = kernel.types();
  TaskInfo info;
  info.address = task;
  info.pid = m.read_value<std::int32_t>(task + t.offset_of("task_struct", "pid"));
  info.tgid = m.read_value<std::int32_t>(task + t.offset_of("task_struct", "tgid"));
  std::string comm = m.read_cstring(task + t.offset_of("task_struct", "comm"), 16);
  info.comm = comm;
  auto state = m.read_value<std::uint32_t>(task + t.offset_of("task_struct", "__state"));
  auto exit_state = m.read_value<std::uint32_t>(task + t.offset_of("task_struct", "exit_state"));
  info.state = state_letter(state, exit_state);
  auto flags = m.read_value<std::uint32_t>(task + t.offset_of("task_struct", "flags"));
  info.kernel_thread = flags & kPfKthread;
  try {
    std::uint64_t parent = m.read_u64(task + t.offset_of("task_struct", "real_parent"));
    info.parent_pid = parent ? m.read_value<std::int32_t>(parent + t.offset_of("task_struct", "pid")) : 0;
  } catch (const MemoryFault&) {
    info.parent_pid = -1;
  }
  return info;
}

TaskList read_tasks(const Kernel& kernel, std::size_t max) {
  TaskList list;
  std::uint64_t init_task = kernel.symbol("init_task");
  std::uint64_t tasks_offset = kernel.types().offset_of("task_struct", "tasks");
  // init_task (pid 0, the idle task) heads the ring and is listed first, as drgn and crash do.
  list.tasks.push_back(read_task(kernel, init_task));
  list.walk = walk_list(kernel.memory(), init_task + tasks_offset, max, [&](std::uint64_t node) {
    list.tasks.push_back(read_task(kernel, node - tasks_offset));
  });
  return list;
}

int online_cpu_count(const Kernel& kernel) {
  auto ids = kernel.memory().read_value<std::uint32_t>(kernel.symbol("nr_cpu_ids"));
  if (ids == 0 || ids > 8192) fail(ExitCode::bad_input, "implausible nr_cpu_ids {}", ids);
  return static_cast<int>(ids);
}

std::vector<std::uint64_t> current_tasks(const Kernel& kernel, int cpus) {
  auto offset = kernel.symbols().percpu_offset("current_task");
  if (!offset) fail(ExitCode::bad_input, "the profile has no per-CPU current_task");
  std::uint64_t per_cpu = kernel.symbol("__per_cpu_offset");
  std::vector<std::uint64_t> out;
  for (int cpu = 0; cpu < cpus; ++cpu) {
    std::uint64_t base = kernel.memory().read_u64(per_cpu + 8 * static_cast<std::uint64_t>(cpu));
    out.push_back(kernel.memory().read_u64(base + *offset));
  }
  return out;
}

X86Registers sleeping_registers(const Kernel& kernel, std::uint64_t task, std::uint64_t stack_size, std::uint64_t* stack) {
  const auto& types = kernel.types();
  const auto& mem = kernel.memory();
  std::uint64_t sp = mem.read_u64(task + types.offset_of("task_struct", "thread.sp"));
  *stack = mem.read_u64(task + types.offset_of("task_struct", "stack"));
  if (sp < *stack || sp >= *stack + stack_size) fail(ExitCode::bad_input, "its saved stack pointer is off its stack");
  auto frame = [&](const char* field) { return mem.read_u64(sp + types.offset_of("inactive_task_frame", field)); };
  X86Registers r;
  r.r15 = frame("r15");
  r.r14 = frame("r14");
  r.r13 = frame("r13");
  r.r12 = frame("r12");
  r.rbx = frame("bx");
  r.rbp = frame("bp");
  r.rip = frame("ret_addr");
  r.rsp = sp + types.require_size("inactive_task_frame");
  return r;
}

}  // namespace immortal
