// What issue 18 asks to be measured while a guest misbehaves: does the supervisor keep answering
// `status`, and how much does its memory grow. A thread asks the control socket for status every
// 250 ms (as `immortal status` does, without the CLI's own start-up time) and reads the
// supervisor's memory from /proc/PID/smaps; stop() says what it saw.
//
// The supervisor maps the guest's RAM: pages of it that a bundle or a repair reads count in its
// VmRSS but cost the host nothing (QEMU holds them anyway). So memory is split in three: the
// guest's RAM, bundle snapshots (copies of guest RAM, bounded by budget::kBundleJobs), and the
// supervisor's own memory (everything else: heap, stacks, code).
#pragma once

#include <atomic>
#include <cstdint>
#include <string>
#include <thread>
#include <vector>

namespace immortal::test {

struct MemoryUse {
  std::uint64_t own_kib = 0;        // resident, neither guest RAM nor snapshots
  std::uint64_t snapshots_kib = 0;  // resident pages of bundle snapshots
  std::uint64_t guest_ram_kib = 0;  // size of the guest RAM mapping (not residency)
};

// A process's memory from /proc/PID/smaps (all zero when it is gone).
MemoryUse memory_use(int pid);

struct ProbeResult {
  std::size_t answers = 0, failures = 0;
  double max_ms = 0, p95_ms = 0;  // status round trips
  MemoryUse start, max;           // max is per field
  std::string describe() const;
};

class SupervisorProbe {
 public:
  explicit SupervisorProbe(const std::string& instance);
  ~SupervisorProbe();
  ProbeResult stop();

 private:
  void run();
  std::string socket_;
  int pid_ = 0;
  std::atomic<bool> stop_{false};
  std::vector<double> round_trips_;
  std::size_t failures_ = 0;
  MemoryUse start_, max_;
  std::thread thread_;
};

}  // namespace immortal::test
