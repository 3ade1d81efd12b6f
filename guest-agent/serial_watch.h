// Serial ports whose transmission stopped with output still queued get their interrupts set
// again (docs/recovery.md, "Serial consoles after an oops").
//
// Why: Linux's 8250 driver prints an oops with oops_in_progress set, so its console write only
// tries the port's lock. When another CPU holds it and has just enabled the transmit interrupt
// (a process writing to the same tty), the console write's restore of the UART's interrupt
// enable register drops that bit while the driver's own copy keeps it set: no transmit interrupt
// comes again, the driver never enables one (its copy says it is on) and every writer of that
// tty blocks for ever. A guest that goes on after an oops, as under immortal, meets this. Setting
// the tty's termios (a real change, then the old one back, without waiting for the output to
// drain) makes the driver write its copy to the UART again.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace immortal::agent {

struct SerialLine {
  int line = -1;       // ttyS<line>
  std::string uart;    // "16550A", or "unknown" for a port with no UART
  std::uint64_t tx = 0;  // bytes sent so far
};
// The ports of /proc/tty/driver/serial ("0: uart:16550A port:000003F8 irq:4 tx:123 rx:0 …");
// lines it does not understand are skipped.
std::vector<SerialLine> parse_serial_driver(std::string_view text);

// What the watch does to a still port (the tty itself in the agent; a fake in tests).
class SerialPorts {
 public:
  struct Look {
    int queued = 0;        // bytes queued for the UART
    bool rearmed = false;  // queued > 0, and the driver wrote its interrupt enables to the UART again
  };
  virtual ~SerialPorts() = default;
  // Asks ttyS<line> what it has queued and, when it has something, re-arms it (one open of the
  // port for both); nullopt when the port cannot be opened.
  virtual std::optional<Look> look(int line) = 0;
};

class SerialWatch {
 public:
  // A port is looked at once its tx count has not moved for this long.
  static constexpr std::uint64_t kStillMs = 2000;
  // A port found idle (nothing queued) is asked again after this long while its count stays
  // still: a write that stalls before its first byte leaves the count where it was (the
  // integration test met it), and only asking again finds that. Opening a port is what asking
  // costs, so not every second.
  static constexpr std::uint64_t kIdleAgainMs = 10000;
  // Called about once a second. Returns the ports it set again this time ("ttyS0: 812 bytes
  // queued"), for the log.
  std::vector<std::string> check(std::uint64_t now_ms);
  // The same over ports already read from /proc/tty/driver/serial.
  std::vector<std::string> check(const std::vector<SerialLine>& lines, std::uint64_t now_ms, SerialPorts& ports);
  std::uint64_t rearmed() const { return rearmed_; }  // since the agent started

 private:
  struct Seen {
    std::uint64_t tx = 0;
    std::uint64_t since_ms = 0;  // tx unchanged since, or last asked
    bool idle = false;           // asked since then: nothing queued
  };
  std::map<int, Seen> seen_;
  std::uint64_t rearmed_ = 0;
};

}  // namespace immortal::agent
