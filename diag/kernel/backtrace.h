// Kernel backtraces: the frames both unwinders produce, and the stack-scan fallback used where
// the ORC unwinder (orc_unwind.h) has no data. The scan lists every word on the stack that points
// into kernel or module text, marked uncertain ("? "), as the kernel's show_trace_log_lvl does
// for unreliable entries; only the frame at rip is certain.
#pragma once

#include "base/budgets.h"
#include "kernel/kernel.h"

#include <string>
#include <vector>

namespace immortal {

struct Frame {
  std::uint64_t pc = 0;
  std::string symbol;    // "func+0x1a/0x40 [module]"
  bool reliable = false;
  // For recovery (ORC frames only): the stack pointer while this frame's function runs at pc
  // (for a call frame: just after the call returned), and the address of the pt_regs frame when
  // pc came from an exception or interrupt frame (all registers at pc are saved there).
  std::uint64_t sp = 0;
  std::uint64_t regs = 0;
};

struct Backtrace {
  std::vector<Frame> frames;
  std::string problem;  // why it stopped early, if it did
  bool truncated = false;  // stopped at the frame budget (kBacktraceFrames), not at the stack's end
};

// Scans from rsp up to the end of its THREAD_SIZE-aligned stack (16 KiB on x86-64).
Backtrace scan_stack(const Kernel& kernel, std::uint64_t rip, std::uint64_t rsp, std::size_t max_frames = budget::kBacktraceFrames);

}  // namespace immortal
