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

// The guest's own ports, through their tty devices. Opening one does not wait for a modem line,
// nor make it our controlling terminal.
class TtyPorts final : public SerialPorts {
 public:
  std::optional<Look> look(int line) override {
    std::string device = "/dev/ttyS" + std::to_string(line);
    int fd = ::open(device.c_str(), O_RDWR | O_NOCTTY | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0) return std::nullopt;
    Look l;
    if (::ioctl(fd, TIOCOUTQ, &l.queued) != 0) l.queued = 0;
    l.rearmed = l.queued > 0 && rearm(fd);
    ::close(fd);
    return l;
  }

 private:
  // A termios change (HUPCL, which means nothing to a UART's data path) and back, both at once
  // (TCSANOW: TCSADRAIN would wait for the stalled output).
  static bool rearm(int fd) {
    termios old{};
    if (::tcgetattr(fd, &old) != 0) return false;
    termios changed = old;
    changed.c_cflag ^= HUPCL;
    bool ok = ::tcsetattr(fd, TCSANOW, &changed) == 0;
    return ::tcsetattr(fd, TCSANOW, &old) == 0 && ok;
  }
};

}  // namespace

std::vector<std::string> SerialWatch::check(std::uint64_t now_ms) {
  std::ifstream in("/proc/tty/driver/serial");
  if (!in) return {};
  std::stringstream text;
  text << in.rdbuf();
  TtyPorts ports;
  return check(parse_serial_driver(text.str()), now_ms, ports);
}

std::vector<std::string> SerialWatch::check(const std::vector<SerialLine>& lines, std::uint64_t now_ms,
                                            SerialPorts& ports) {
  std::vector<std::string> done;
  for (const SerialLine& l : lines) {
    if (l.uart == "unknown" || l.tx == 0) continue;  // no UART there, or never used: nothing to stall
    auto [it, fresh] = seen_.try_emplace(l.line, Seen{l.tx, now_ms, false});
    Seen& s = it->second;
    if (fresh || s.tx != l.tx) {
      s = Seen{l.tx, now_ms, false};
      continue;
    }
    if (now_ms - s.since_ms < (s.idle ? kIdleAgainMs : kStillMs)) continue;
    // Still for a while: idle, or stalled with output queued.
    s.since_ms = now_ms;  // asked now: again after kStillMs if re-armed, kIdleAgainMs if idle
    std::optional<SerialPorts::Look> look = ports.look(l.line);
    if (look && look->rearmed) {
      ++rearmed_;
      s.idle = false;
      done.push_back("ttyS" + std::to_string(l.line) + ": " + std::to_string(look->queued) + " bytes queued");
    } else {
      s.idle = true;
    }
  }
  return done;
}

}  // namespace immortal::agent
