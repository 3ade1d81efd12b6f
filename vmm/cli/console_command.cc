// `immortal console NAME`: the guest's serial console on this terminal, in the manner of
// `virsh console` (Ctrl-] detaches). One session at a time per instance; the console log keeps
// everything whether or not a session is open.
#include "base/error.h"
#include "base/io.h"
#include "cli/commands.h"
#include "control/control_channel.h"
#include "instance.h"

#include <fcntl.h>
#include <poll.h>
#include <sys/file.h>
#include <termios.h>
#include <unistd.h>

#include <cstring>
#include <iostream>
#include <optional>

namespace immortal::vmm {

namespace {

constexpr char kEscape = 0x1d;  // Ctrl-], as virsh and telnet

// The terminal in raw mode for the session, restored however it ends.
class RawTerminal {
 public:
  RawTerminal() {
    if (!::isatty(0) || ::tcgetattr(0, &saved_) != 0) return;
    termios raw = saved_;
    ::cfmakeraw(&raw);
    if (::tcsetattr(0, TCSANOW, &raw) == 0) active_ = true;
  }
  ~RawTerminal() {
    if (active_) ::tcsetattr(0, TCSANOW, &saved_);
  }
  RawTerminal(const RawTerminal&) = delete;
  RawTerminal& operator=(const RawTerminal&) = delete;
  bool active() const { return active_; }

 private:
  termios saved_{};
  bool active_ = false;
};

// All of it (io.h's write_all), or false once the other end has gone.
bool write_fully(int fd, const char* data, std::size_t size) {
  try {
    write_all(fd, std::string_view(data, size));
    return true;
  } catch (const Error&) {
    return false;
  }
}

}  // namespace

int console_command(const GlobalOptions& global, const std::string& name) {
  check_instance_name(name);
  std::string root = runtime_root(global.runtime_dir);
  if (!instance_running(root, name)) fail(ExitCode::no_instance, "no running instance named \"{}\"", name);
  json status = control_call(root + "/" + name + "/control.sock", {{"command", "status"}},
                             Deadline::in(std::chrono::seconds(20)));
  std::string socket = status.value("console_socket", "");
  if (socket.empty())
    fail(ExitCode::failure, "instance \"{}\" has no interactive console (its VM was started by an older immortal); "
         "its output is in {}", name, status.value("console_log", "the console log"));

  // One session at a time: the VM's console serves one client, a second would wait unseen.
  std::string lock_path = root + "/" + name + "/console.lock";
  UniqueFd lock(::open(lock_path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600));
  if (!lock) fail_os(ExitCode::failure, lock_path, errno);
  if (::flock(lock.get(), LOCK_EX | LOCK_NB) != 0)
    fail(ExitCode::failure, "another console session of \"{}\" is active", name);

  UniqueFd console = connect_unix(socket);
  bool interactive = ::isatty(0);
  if (interactive) std::cerr << "Connected to " << name << "'s console (escape character is ^])\r\n";
  RawTerminal terminal;
  char buf[4096];
  bool input_open = true;
  // Without a terminal (a script piping commands), the session ends once input has ended and
  // the guest has been quiet for two seconds (at most 30 s after the input ended).
  std::optional<Clock::time_point> input_ended, last_output;
  for (;;) {
    pollfd fds[2] = {{console.get(), POLLIN, 0}, {0, static_cast<short>(input_open ? POLLIN : 0), 0}};
    int timeout_ms = input_ended ? 200 : -1;
    int n = ::poll(fds, input_open ? 2 : 1, timeout_ms);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) fail_os(ExitCode::failure, "poll", errno);
    if (fds[0].revents & (POLLIN | POLLHUP | POLLERR)) {
      ssize_t got = ::read(console.get(), buf, sizeof buf);
      if (got <= 0) {
        if (interactive) std::cerr << "\r\nimmortal: the console closed (the VM ended?)\r\n";
        return got == 0 ? 0 : static_cast<int>(ExitCode::failure);
      }
      if (!write_fully(1, buf, static_cast<std::size_t>(got))) return 0;
      last_output = Clock::now();
    }
    if (input_open && (fds[1].revents & (POLLIN | POLLHUP | POLLERR))) {
      ssize_t got = ::read(0, buf, sizeof buf);
      if (got <= 0) {
        input_open = false;
        input_ended = last_output = Clock::now();
        continue;
      }
      std::size_t size = static_cast<std::size_t>(got);
      if (terminal.active()) {
        if (const void* at = std::memchr(buf, kEscape, size)) {
          write_fully(console.get(), buf, static_cast<std::size_t>(static_cast<const char*>(at) - buf));
          std::cerr << "\r\n";
          return 0;
        }
      }
      if (!write_fully(console.get(), buf, size)) fail(ExitCode::failure, "the console of \"{}\" closed", name);
    }
    if (input_ended && (Clock::now() - *last_output > std::chrono::seconds(2) ||
                        Clock::now() - *input_ended > std::chrono::seconds(30)))
      return 0;
  }
}

}  // namespace immortal::vmm
