// Tasks of the guest kernel: the task list from init_task (thread-group leaders, as /proc lists
// processes) and the task running on each CPU.
#pragma once

#include "kernel/kernel.h"
#include "kernel/list_walk.h"

#include <string>
#include <vector>

namespace immortal {

struct TaskInfo {
  std::uint64_t address = 0;  // struct task_struct *
  int pid = 0;
  int tgid = 0;
  int parent_pid = 0;
  std::string comm;
  char state = '?';           // as ps shows it: R S D T t Z X I
  bool kernel_thread = false;
};

struct TaskList {
  std::vector<TaskInfo> tasks;
  WalkResult walk;
};

TaskInfo read_task(const Kernel& kernel, std::uint64_t task);
TaskList read_tasks(const Kernel& kernel, std::size_t max = 1 << 20);
// Where a task that is not running sleeps: the registers __switch_to_asm saved on its stack
// (struct inactive_task_frame at thread.sp), with rsp just above that frame, ready to unwind;
// *stack gets its stack's base. Throws Error(ExitCode::bad_input) when the saved stack pointer
// lies off its stack of stack_size bytes, MemoryFault when it cannot be read.
X86Registers sleeping_registers(const Kernel& kernel, std::uint64_t task, std::uint64_t stack_size, std::uint64_t* stack);
// The task_struct running on each CPU (per-CPU current_task), cpus = number of CPUs to read.
std::vector<std::uint64_t> current_tasks(const Kernel& kernel, int cpus);
int online_cpu_count(const Kernel& kernel);

}  // namespace immortal
