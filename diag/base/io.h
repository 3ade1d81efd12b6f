// Small, blocking-with-deadline I/O helpers over file descriptors and UNIX sockets.
#pragma once

#include "base/unique_fd.h"

#include <chrono>
#include <cstddef>
#include <string>
#include <string_view>
#include <vector>

namespace immortal {

using Clock = std::chrono::steady_clock;

// A point in time after which an operation gives up. Deadline::never() waits forever.
class Deadline {
 public:
  static Deadline in(std::chrono::milliseconds d) { return Deadline(Clock::now() + d); }
  static Deadline never() { return Deadline(Clock::time_point::max()); }
  bool expired() const { return Clock::now() >= at_; }
  // Milliseconds left, clamped for poll(2): -1 for never, 0 when expired.
  int poll_timeout_ms() const;
  Clock::time_point at() const { return at_; }

 private:
  explicit Deadline(Clock::time_point at) : at_(at) {}
  Clock::time_point at_;
};

// Connects a SOCK_STREAM UNIX socket; throws Error (ExitCode::failure) naming the path.
UniqueFd connect_unix(const std::string& path);
// Like connect_unix but retries while the socket does not exist yet or refuses.
UniqueFd connect_unix_retry(const std::string& path, Deadline deadline);
// Listens on a fresh UNIX socket at path (an old socket file there is replaced).
UniqueFd listen_unix(const std::string& path);

// Waits until fd is readable (or hung up). Returns false when the deadline passed.
bool wait_readable(int fd, Deadline deadline);
// Writes everything or throws; a non-blocking fd is waited on until the deadline.
void write_all(int fd, std::string_view data, Deadline deadline = Deadline::never());
// One read(2) of at most max bytes; returns "" at end of file. Retries EINTR.
// Throws on errors other than EAGAIN (which returns "" with *would_block set).
std::string read_some(int fd, std::size_t max, bool* would_block = nullptr);

// The last max_bytes of a file (all of it when smaller), and the offset they start at; "" if
// unreadable. A log the guest fills is read back this way, never whole.
std::string read_tail(const std::string& path, std::uint64_t max_bytes, std::uint64_t* start = nullptr);
// The last max_lines non-empty lines of a text file (a log), oldest first, from its last
// budget::kConsoleTail bytes, made terminal-safe (base/terminal_text.h); empty if unreadable.
std::vector<std::string> last_lines(const std::string& path, std::size_t max_lines);

void set_nonblocking(int fd, bool on);
void set_cloexec(int fd, bool on);

}  // namespace immortal
