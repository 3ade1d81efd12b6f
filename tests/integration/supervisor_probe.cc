#include "supervisor_probe.h"

#include "control/control_channel.h"
#include "harness.h"
#include "instance_json.h"

#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <fstream>

namespace immortal::test {

std::uint64_t resident_kib(int pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/status");
  for (std::string line; std::getline(in, line);)
    if (line.rfind("VmRSS:", 0) == 0) return std::stoull(line.substr(6));
  return 0;
}

std::string ProbeResult::describe() const {
  return fmt::format("{} status answers ({} failed), round trip max {:.0f} ms, p95 {:.0f} ms; resident {} MiB -> max {} MiB",
                     answers, failures, max_ms, p95_ms, rss_start_kib / 1024, rss_max_kib / 1024);
}

SupervisorProbe::SupervisorProbe(const std::string& instance)
    : socket_(test_runtime_root() + "/" + instance + "/control.sock"),
      pid_(status_json(instance).value("supervisor_pid", 0)) {
  rss_start_ = rss_max_ = resident_kib(pid_);
  thread_ = std::thread([this] { run(); });
}

SupervisorProbe::~SupervisorProbe() {
  if (thread_.joinable()) stop();
}

void SupervisorProbe::run() {
  using namespace std::chrono;
  while (!stop_) {
    auto start = steady_clock::now();
    try {
      (void)vmm::control_call(socket_, {{"command", "status"}}, Deadline::in(20s));
      round_trips_.push_back(duration<double, std::milli>(steady_clock::now() - start).count());
    } catch (const std::exception&) {
      ++failures_;
    }
    rss_max_ = std::max(rss_max_, resident_kib(pid_));
    std::this_thread::sleep_until(start + 250ms);
  }
}

ProbeResult SupervisorProbe::stop() {
  stop_ = true;
  thread_.join();
  ProbeResult r;
  r.answers = round_trips_.size();
  r.failures = failures_;
  if (!round_trips_.empty()) {
    std::sort(round_trips_.begin(), round_trips_.end());
    r.max_ms = round_trips_.back();
    r.p95_ms = round_trips_[std::min(round_trips_.size() - 1, round_trips_.size() * 95 / 100)];
  }
  r.rss_start_kib = rss_start_;
  r.rss_max_kib = rss_max_;
  return r;
}

}  // namespace immortal::test
