// Backtraces of a kernel stack. For now the stack-scan fallback: the frame at rip is certain,
// then every word on the stack that points into kernel or module text is listed and marked
// uncertain ("? "), as the kernel's own show_trace_log_lvl does for unreliable entries. The ORC
// unwinder (its tables are in the kernel's memory) is the next step.
#pragma once

#include "kernel/kernel.h"

#include <string>
#include <vector>

namespace immortal {

struct Frame {
  std::uint64_t pc = 0;
  std::string symbol;    // "func+0x1a/0x40 [module]"
  bool reliable = false;
};

struct Backtrace {
  std::vector<Frame> frames;
  std::string problem;  // why it stopped early, if it did
};

// Scans from rsp up to the end of its THREAD_SIZE-aligned stack (16 KiB on x86-64).
Backtrace scan_stack(const Kernel& kernel, std::uint64_t rip, std::uint64_t rsp, std::size_t max_frames = 64);
std::string format_backtrace(const Backtrace& bt);

// Taint flags as the kernel prints them ("G" when clean, else e.g. "POE").
std::string taint_string(std::uint64_t mask);
std::uint64_t read_taint_mask(const Kernel& kernel);

}  // namespace immortal
