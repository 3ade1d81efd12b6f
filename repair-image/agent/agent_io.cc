#include "agent/agent_io.h"

#include "base/error.h"

#include <unistd.h>

#include <fmt/format.h>

#include <cerrno>

namespace immortal::repair {

std::string read_all(int fd, std::size_t limit, const char* what) {
  std::string out;
  char buf[65536];
  for (;;) {
    ssize_t n = ::read(fd, buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) fail_os(ExitCode::failure, fmt::format("read {}", what), errno);
    if (n == 0) return out;
    if (out.size() + static_cast<std::size_t>(n) > limit) fail(ExitCode::bad_input, "{} is larger than {} bytes", what, limit);
    out.append(buf, static_cast<std::size_t>(n));
  }
}

void write_all(int fd, const std::string& data) {
  std::size_t done = 0;
  while (done < data.size()) {
    ssize_t n = ::write(fd, data.data() + done, data.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) fail_os(ExitCode::failure, "write the answer", errno);
    done += static_cast<std::size_t>(n);
  }
}

void agent_say(const std::string& line) {
  std::string out = "immortal-repair-agent: " + line + "\n";
  [[maybe_unused]] auto n = ::write(2, out.data(), out.size());
}

}  // namespace immortal::repair
