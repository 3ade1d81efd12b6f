// The guest's serial console as the supervisor uses it: copied to the terminal as it grows
// (`run --console`), and its last lines quoted when a boot or a crash needs explaining.
#pragma once

#include <cstdint>
#include <string>

namespace immortal::vmm {

class ConsoleLog {
 public:
  ConsoleLog(std::string path, bool echo) : path_(std::move(path)), echo_(echo) {}
  // Copies what was added since the last call to stdout (when echoing).
  void pump();
  void stop_echo() { echo_ = false; }
  // The last n lines, indented for a message ("(the console is empty)" when there are none).
  std::string last_lines(std::size_t n) const;

 private:
  std::string path_;
  bool echo_;
  std::uint64_t offset_ = 0;
};

}  // namespace immortal::vmm
