// The kernel log of Linux 6.1: the lockless printk ring buffer (kernel/printk/printk_ringbuffer.c)
// behind `prb`, read record by record as dmesg shows it. Layouts come from the kernel's types;
// every index is masked and every length bounded, so a corrupted ring yields fewer records, not
// a wild read.
#pragma once

#include "kernel/kernel.h"

#include <cstdint>
#include <string>
#include <vector>

namespace immortal {

struct LogRecord {
  std::uint64_t seq = 0;
  std::uint64_t ts_nsec = 0;
  int level = 0;
  std::string text;
};

struct KernelLog {
  std::vector<LogRecord> records;
  std::size_t skipped = 0;  // descriptors not readable or not finished
  bool truncated = false;   // budget::kLogRecords or kLogTextBytes reached: the newest records are missing
};

// newest: read at most this many records back from the newest (within budget::kLogRecords); a
// crash's analysis wants the last few hundred, not a whole ring.
KernelLog read_kernel_log(const Kernel& kernel, std::size_t newest = SIZE_MAX);
// The message of the last "Kernel panic - not syncing: ..." record, if any.
std::string panic_message(const KernelLog& log);

}  // namespace immortal
