// What /proc/PID/stat says of a host process: its state and when it started. Read the same way
// wherever a pid is checked (a VM we attach to, a supervisor that hands over): the command name
// in parentheses may hold spaces and parentheses, so fields are counted after the last ')'.
#pragma once

#include <cstdint>
#include <optional>

namespace immortal {

struct ProcessStat {
  char state = '?';             // R, S, D, Z (exited, not reaped) …
  std::uint64_t start_time = 0; // clock ticks since boot; with the pid it names one process
};

// nullopt when the process does not exist (or its stat cannot be read or parsed).
std::optional<ProcessStat> process_stat(int pid);

// Present and not a zombie.
inline bool process_running(int pid) {
  auto s = process_stat(pid);
  return s && s->state != 'Z';
}

}  // namespace immortal
