#include "base/io.h"

#include "base/budgets.h"
#include "base/error.h"
#include "base/terminal_text.h"

#include <fcntl.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <deque>
#include <fstream>
#include <thread>

namespace immortal {

int Deadline::poll_timeout_ms() const {
  if (at_ == Clock::time_point::max()) return -1;
  auto left = std::chrono::ceil<std::chrono::milliseconds>(at_ - Clock::now()).count();
  if (left <= 0) return 0;
  return left > 1'000'000'000 ? 1'000'000'000 : static_cast<int>(left);
}

static sockaddr_un unix_address(const std::string& path) {
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (path.size() >= sizeof(addr.sun_path))
    fail(ExitCode::bad_input, "socket path too long ({} bytes, at most {}): {}", path.size(),
         sizeof(addr.sun_path) - 1, path);
  std::memcpy(addr.sun_path, path.c_str(), path.size() + 1);
  return addr;
}

static int try_connect_unix(const std::string& path, UniqueFd& out) {
  sockaddr_un addr = unix_address(path);
  UniqueFd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (!fd) return errno;
  if (::connect(fd.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) return errno;
  out = std::move(fd);
  return 0;
}

UniqueFd connect_unix(const std::string& path) {
  UniqueFd fd;
  if (int err = try_connect_unix(path, fd)) fail_os(ExitCode::failure, "connect " + path, err);
  return fd;
}

UniqueFd connect_unix_retry(const std::string& path, Deadline deadline) {
  for (;;) {
    UniqueFd fd;
    int err = try_connect_unix(path, fd);
    if (err == 0) return fd;
    if ((err != ENOENT && err != ECONNREFUSED) || deadline.expired())
      fail_os(ExitCode::failure, "connect " + path, err);
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
}

UniqueFd listen_unix(const std::string& path) {
  sockaddr_un addr = unix_address(path);
  UniqueFd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (!fd) fail_os(ExitCode::failure, "socket", errno);
  ::unlink(path.c_str());
  if (::bind(fd.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0)
    fail_os(ExitCode::failure, "bind " + path, errno);
  if (::listen(fd.get(), 16) != 0) fail_os(ExitCode::failure, "listen " + path, errno);
  return fd;
}

bool wait_readable(int fd, Deadline deadline) {
  for (;;) {
    pollfd p{fd, POLLIN, 0};
    int n = ::poll(&p, 1, deadline.poll_timeout_ms());
    if (n > 0) return true;
    if (n == 0) return false;
    if (errno != EINTR) fail_os(ExitCode::failure, "poll", errno);
  }
}

void write_all(int fd, std::string_view data, Deadline deadline) {
  while (!data.empty()) {
    ssize_t n = ::send(fd, data.data(), data.size(), MSG_NOSIGNAL);
    if (n < 0 && errno == ENOTSOCK) n = ::write(fd, data.data(), data.size());
    if (n > 0) {
      data.remove_prefix(static_cast<std::size_t>(n));
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && errno == EAGAIN) {
      pollfd p{fd, POLLOUT, 0};
      int r = ::poll(&p, 1, deadline.poll_timeout_ms());
      if (r == 0) fail(ExitCode::timeout, "write timed out");
      continue;
    }
    fail_os(ExitCode::failure, "write", n < 0 ? errno : EIO);
  }
}

std::string read_some(int fd, std::size_t max, bool* would_block) {
  if (would_block) *would_block = false;
  std::string buf(max, '\0');
  for (;;) {
    ssize_t n = ::read(fd, buf.data(), max);
    if (n >= 0) {
      buf.resize(static_cast<std::size_t>(n));
      return buf;
    }
    if (errno == EINTR) continue;
    if (errno == EAGAIN && would_block) {
      *would_block = true;
      return {};
    }
    fail_os(ExitCode::failure, "read", errno);
  }
}

std::string read_tail(const std::string& path, std::uint64_t max_bytes, std::uint64_t* start) {
  std::ifstream in(path, std::ios::binary);
  if (start) *start = 0;
  if (!in) return {};
  in.seekg(0, std::ios::end);
  auto size = static_cast<std::uint64_t>(std::max<std::streamoff>(in.tellg(), 0));
  std::uint64_t from = size > max_bytes ? size - max_bytes : 0;
  in.seekg(static_cast<std::streamoff>(from));
  std::string tail(size - from, '\0');
  in.read(tail.data(), static_cast<std::streamsize>(tail.size()));
  tail.resize(static_cast<std::size_t>(std::max<std::streamsize>(in.gcount(), 0)));
  if (start) *start = from;
  return tail;
}

std::vector<std::string> last_lines(const std::string& path, std::size_t max_lines) {
  // Only the file's end is read (a guest fills its console as it likes), and every line is made
  // safe for a terminal: these lines end up in messages to the operator.
  std::uint64_t start = 0;
  std::string tail = read_tail(path, budget::kConsoleTail, &start);
  std::deque<std::string> lines;
  std::size_t pos = 0;
  if (start > 0) {  // a partial first line
    std::size_t nl = tail.find('\n');
    pos = nl == std::string::npos ? tail.size() : nl + 1;
  }
  while (pos < tail.size()) {
    std::size_t end = tail.find('\n', pos);
    if (end == std::string::npos) end = tail.size();
    std::string_view line(tail.data() + pos, end - pos);
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    if (!line.empty()) {
      lines.push_back(terminal_safe(line));
      if (lines.size() > max_lines) lines.pop_front();
    }
    pos = end + 1;
  }
  return {lines.begin(), lines.end()};
}

void set_nonblocking(int fd, bool on) {
  int flags = ::fcntl(fd, F_GETFL);
  if (flags < 0 || ::fcntl(fd, F_SETFL, on ? flags | O_NONBLOCK : flags & ~O_NONBLOCK) < 0)
    fail_os(ExitCode::failure, "fcntl O_NONBLOCK", errno);
}

void set_cloexec(int fd, bool on) {
  int flags = ::fcntl(fd, F_GETFD);
  if (flags < 0 || ::fcntl(fd, F_SETFD, on ? flags | FD_CLOEXEC : flags & ~FD_CLOEXEC) < 0)
    fail_os(ExitCode::failure, "fcntl FD_CLOEXEC", errno);
}

}  // namespace immortal
