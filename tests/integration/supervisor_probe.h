// What issue 18 asks to be measured while a guest misbehaves: does the supervisor keep answering
// `status`, and how much does its resident memory grow. A thread asks the control socket for
// status every 250 ms (as `immortal status` does, without the CLI's own start-up time) and reads
// the supervisor's VmRSS from /proc; stop() says what it saw.
#pragma once

#include <atomic>
#include <cstdint>
#include <string>
#include <thread>
#include <vector>

namespace immortal::test {

struct ProbeResult {
  std::size_t answers = 0, failures = 0;
  double max_ms = 0, p95_ms = 0;         // status round trips
  std::uint64_t rss_start_kib = 0, rss_max_kib = 0;
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
  std::uint64_t rss_start_ = 0, rss_max_ = 0;
  std::thread thread_;
};

// VmRSS of a process in KiB (0 when it is gone).
std::uint64_t resident_kib(int pid);

}  // namespace immortal::test
