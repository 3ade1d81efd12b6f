#include "serial_watch.h"

#include <fcntl.h>
#include <sys/ioctl.h>
#include <termios.h>
#include <unistd.h>

#include <charconv>
#include <fstream>
#include <sstream>

namespace immortal::agent {

std::vector<SerialLine> parse_serial_driver(std::string_view text) {
  std::vector<SerialLine> out;
  std::istringstream in{std::string(text)};
  for (std::string row; std::getline(in, row);) {
    std::istringstream fields(row);
    std::string first;
    fields >> first;
    if (first.size() < 2 || first.back() != ':') continue;  // "serinfo:1.0 driver …" and the like
    SerialLine l;
    auto [p, ec] = std::from_chars(first.data(), first.data() + first.size() - 1, l.line);
    if (ec != std::errc() || p != first.data() + first.size() - 1 || l.line < 0 || l.line > 255) continue;
    bool has_tx = false;
    for (std::string f; fields >> f;) {
      if (f.rfind("uart:", 0) == 0) l.uart = f.substr(5);
      if (f.rfind("tx:", 0) == 0) {
        auto [q, e] = std::from_chars(f.data() + 3, f.data() + f.size(), l.tx);
        has_tx = e == std::errc() && q == f.data() + f.size();
      }
    }
    if (!l.uart.empty() && has_tx) out.push_back(std::move(l));
  }
  return out;
}

namespace {

// Bytes queued for the UART (0 when the port cannot be opened).
int queued(int fd) {
  int n = 0;
  return ::ioctl(fd, TIOCOUTQ, &n) == 0 ? n : 0;
}

// Makes the driver program the UART again from its own state: a termios change (HUPCL, which
// means nothing to a UART's data path) and back, both at once (TCSANOW: TCSADRAIN would wait for
// the stalled output).
bool rearm(int fd) {
  termios old{};
  if (::tcgetattr(fd, &old) != 0) return false;
  termios changed = old;
  changed.c_cflag ^= HUPCL;
  bool ok = ::tcsetattr(fd, TCSANOW, &changed) == 0;
  return ::tcsetattr(fd, TCSANOW, &old) == 0 && ok;
}

}  // namespace

std::vector<std::string> SerialWatch::check(std::uint64_t now_ms) {
  std::vector<std::string> done;
  std::ifstream in("/proc/tty/driver/serial");
  if (!in) return done;
  std::stringstream text;
  text << in.rdbuf();
  for (const SerialLine& l : parse_serial_driver(text.str())) {
    if (l.uart == "unknown" || l.tx == 0) continue;  // no UART there, or never used: nothing to stall
    auto [it, fresh] = seen_.try_emplace(l.line, Seen{l.tx, now_ms, false});
    Seen& s = it->second;
    if (fresh || s.tx != l.tx) {
      s = Seen{l.tx, now_ms, false};
      continue;
    }
    if (s.idle || now_ms - s.since_ms < kStillMs) continue;
    // Still for a while: idle, or stalled with output queued. Opening it does not wait for a
    // modem line, nor make it our controlling terminal.
    std::string device = "/dev/ttyS" + std::to_string(l.line);
    int fd = ::open(device.c_str(), O_RDWR | O_NOCTTY | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0) {
      s.idle = true;
      continue;
    }
    int n = queued(fd);
    if (n > 0 && rearm(fd)) {
      ++rearmed_;
      done.push_back("ttyS" + std::to_string(l.line) + ": " + std::to_string(n) + " bytes queued");
      s.since_ms = now_ms;  // looked at again if it stays still
    } else {
      s.idle = true;
    }
    ::close(fd);
  }
  return done;
}

}  // namespace immortal::agent
