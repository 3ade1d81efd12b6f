// The guest's serial console as the supervisor uses it: copied to the terminal as it grows
// (`run --console`), its last lines quoted when a boot or a crash needs explaining, and kept
// within budget::kConsoleLogBytes — the guest writes what it likes, and the log is on tmpfs
// (memory) by default. QEMU appends to it (logappend=on, the file emptied at launch); past the
// budget its last MiB is kept as console.log.1 and the log starts again empty.
#pragma once

#include <chrono>
#include <cstdint>
#include <string>

namespace immortal::vmm {

class ConsoleLog {
 public:
  ConsoleLog(std::string path, bool echo) : path_(std::move(path)), echo_(echo) {}
  // Keeps the log within its budget (at most once a second), then copies what was added since
  // the last call to stdout (when echoing).
  void pump();
  void stop_echo() { echo_ = false; }
  // The last n lines, indented for a message ("(the console is empty)" when there are none).
  std::string last_lines(std::size_t n) const;
  // The rotation, whatever the time (tests).
  void limit_size(std::uint64_t budget);

 private:
  std::string path_;
  bool echo_;
  std::uint64_t offset_ = 0;
  std::chrono::steady_clock::time_point checked_{};
};

}  // namespace immortal::vmm
