#include "supervisor_probe.h"

#include "control/control_channel.h"
#include "harness.h"
#include "instance_json.h"

#include <fmt/format.h>

#include <algorithm>
#include <cctype>
#include <chrono>
#include <fstream>

namespace immortal::test {

MemoryUse memory_use(int pid) {
  // Mappings are named by the memfds the supervisor creates: "immortal-ram-NAME" for guest RAM
  // (vmm/qemu/qemu_machine.cc), "immortal-snapshot" for bundle snapshots
  // (diag/dump/memory_snapshot.cc) and the host's arena pool in /dev/shm
  // (vmm/recovery/arena_pool.cc).
  MemoryUse use;
  std::ifstream in("/proc/" + std::to_string(pid) + "/smaps");
  enum { own, ram, snapshot } kind = own;
  for (std::string line; std::getline(in, line);) {
    if (!line.empty() && std::isxdigit(static_cast<unsigned char>(line[0])) && line.find(' ') != std::string::npos &&
        line.find('-') < line.find(' ')) {
      kind = line.find("/memfd:immortal-ram-") != std::string::npos       ? ram
             : line.find("/memfd:immortal-snapshot") != std::string::npos ||
                       line.find("/immortal-arenas-") != std::string::npos
                 ? snapshot
                 : own;
      continue;
    }
    auto value = [&] { return std::stoull(line.substr(line.find(':') + 1)); };
    if (line.rfind("Size:", 0) == 0 && kind == ram) use.guest_ram_kib += value();
    if (line.rfind("Rss:", 0) != 0) continue;
    if (kind == own) use.own_kib += value();
    if (kind == snapshot) use.snapshots_kib += value();
  }
  return use;
}

std::string ProbeResult::describe() const {
  return fmt::format("{} status answers ({} failed), round trip max {:.0f} ms, p95 {:.0f} ms; own memory {} MiB -> "
                     "max {} MiB; bundle snapshots {} MiB -> max {} MiB (guest RAM {} MiB)",
                     answers, failures, max_ms, p95_ms, start.own_kib / 1024, max.own_kib / 1024,
                     start.snapshots_kib / 1024, max.snapshots_kib / 1024, start.guest_ram_kib / 1024);
}

SupervisorProbe::SupervisorProbe(const std::string& instance)
    : socket_(test_runtime_root() + "/" + instance + "/control.sock"),
      pid_(status_json(instance).value("supervisor_pid", 0)) {
  start_ = max_ = memory_use(pid_);
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
    MemoryUse now = memory_use(pid_);
    max_.own_kib = std::max(max_.own_kib, now.own_kib);
    max_.snapshots_kib = std::max(max_.snapshots_kib, now.snapshots_kib);
    max_.guest_ram_kib = std::max(max_.guest_ram_kib, now.guest_ram_kib);
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
  r.start = start_;
  r.max = max_;
  return r;
}

}  // namespace immortal::test
