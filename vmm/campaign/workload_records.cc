#include "campaign/workload_records.h"

#include "base/error.h"
#include "base/unique_fd.h"

#include <fmt/format.h>

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstring>

namespace immortal::vmm {

namespace {

constexpr std::size_t kConsoleReadChunk = 1 << 20;     // read at most this much of the log per poll
constexpr std::size_t kMaxConsoleLine = 4096;          // a longer "line" is the guest's noise: dropped
constexpr std::size_t kRecentAckCount = 4096;       // acknowledgements whose times are kept
constexpr std::uint64_t kMaxRecordNumber = 1ull << 40;

std::optional<std::uint64_t> number_after(const std::string& line, const char* marker) {
  auto at = line.find(marker);
  if (at == std::string::npos) return std::nullopt;
  std::size_t i = at + std::strlen(marker);
  std::uint64_t n = 0;
  std::size_t digits = 0;
  while (i < line.size() && line[i] >= '0' && line[i] <= '9' && digits < 13) n = n * 10 + static_cast<unsigned>(line[i++] - '0'), ++digits;
  bool longer = i < line.size() && line[i] >= '0' && line[i] <= '9';
  if (!digits || longer || n == 0 || n > kMaxRecordNumber) return std::nullopt;
  return n;
}

// A line read from /dev/kmsg starts "PRIORITY,SEQUENCE,MICROSECONDS,FLAGS;": the text is after it.
std::string without_kmsg_prefix(const std::string& line) {
  auto semicolon = line.find(';');
  if (semicolon == std::string::npos || semicolon > 64) return line;
  int commas = 0;
  for (std::size_t i = 0; i < semicolon; ++i) {
    char c = line[i];
    if (c == ',') ++commas;
    else if (!(c >= '0' && c <= '9') && c != '-' && c != 'c' && c != '+') return line;
  }
  return commas >= 3 ? line.substr(semicolon + 1) : line;
}

}  // namespace

void GuestOutputWatch::poll() {
  UniqueFd fd(::open(path_.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd) return;
  struct stat st {};
  if (::fstat(fd.get(), &st) != 0) return;
  if (static_cast<std::uint64_t>(st.st_size) < offset_) offset_ = 0, partial_.clear();  // rotated
  if (static_cast<std::uint64_t>(st.st_size) == offset_) return;  // nothing new (polled every 50 ms)
  WallTime now = std::chrono::system_clock::now();
  std::string buffer(kConsoleReadChunk, '\0');
  for (int chunk = 0; chunk < 64; ++chunk) {
    ssize_t n = ::pread(fd.get(), buffer.data(), buffer.size(), static_cast<off_t>(offset_));
    if (n <= 0) return;
    offset_ += static_cast<std::uint64_t>(n);
    for (ssize_t i = 0; i < n; ++i) {
      char c = buffer[static_cast<std::size_t>(i)];
      if (c == '\n' || c == '\r') {
        if (!partial_.empty()) take_line(partial_, now);
        partial_.clear();
      } else if (partial_.size() < kMaxConsoleLine) {
        partial_ += c;
      }
    }
  }
}

void GuestOutputWatch::take_line(const std::string& line, WallTime now) {
  // What Linux prints first when it reports a fault of its own (arch/x86 traps and faults,
  // BUG(), WARN(), the watchdogs, panic).
  static const char* const kReports[] = {"Oops:", "BUG:", "kernel BUG at", "WARNING:", "general protection fault",
                                         "divide error:", "invalid opcode:", "Kernel panic", "stack guard page",
                                         "soft lockup", "blocked for more than", "double fault:", "stack-protector:"};
  for (const char* r : kReports)
    if (line.find(r) != std::string::npos && line.find("immortal-record") == std::string::npos) {
      ++reports_;
      last_report_ = without_kmsg_prefix(line).substr(0, 200);
      break;
    }
  if (line.find("immortal-record-failed ") != std::string::npos) {
    ++failed_;
    return;
  }
  auto seq = number_after(line, "immortal-record ");
  if (!seq) return;
  // After a reboot the workload starts again above the highest acknowledgement the host saw;
  // a lower number is an old line read again (rotation) and changes nothing.
  if (*seq <= highest_) return;
  highest_ = *seq;
  acks_.emplace_back(*seq, now);
  if (acks_.size() > kRecentAckCount) acks_.erase(acks_.begin(), acks_.begin() + kRecentAckCount / 2);
}

std::optional<double> GuestOutputWatch::longest_gap_ms(WallTime since) const {
  std::optional<double> longest;
  std::optional<WallTime> previous;
  for (const auto& [seq, t] : acks_) {
    if (t < since) {
      previous = t;
      continue;
    }
    if (previous) {
      double gap = std::chrono::duration<double, std::milli>(t - *previous).count();
      if (!longest || gap > *longest) longest = gap;
    }
    previous = t;
  }
  return longest;
}

std::string record_text(std::uint64_t seq) { return fmt::format("immortal-record {:010d}\n", seq); }

// The workload in the guest: record N alone in sector N, made durable (fsync) before it is
// acknowledged; a failed write is said and retried. Written into the guest at each boot, so
// that it needs nothing installed there.
//
// The acknowledgements go to a virtio-serial port of their own. Two earlier ways cost what they
// measured:
//  - on the serial tty, they depended on the UART's transmit interrupt, which a campaign saw lost
//    after 1 recovered crash in about 100 (the tty stuck for good, its writer with it; likely the
//    oops printed with the port's lock only tried, oops_in_progress, while the workload's tty
//    write was being transmitted);
//  - in the kernel's log (/dev/kmsg), 20 lines a second pushed the boot's messages out of the
//    ring within minutes, and recovery, which wants the whole log as evidence of who held a
//    spinlock, rebooted a guest it could otherwise have proved safe to resume.
constexpr const char* kRecordsScript = R"SH(dev=$1
port=$2
seq=$3
interval=$4
exec 3>"$port" || exit 4
# The kernel's messages too, for its reports of trouble where the host has no console log of the
# guest (a libvirt domain's). cat ends when the ring overran it (EPIPE): read again.
(while :; do cat /dev/kmsg; sleep 1; done >&3 2>/dev/null &)
while :; do
    if printf 'immortal-record %010d\n' "$seq" |
        dd of="$dev" bs=512 seek="$seq" conv=sync,notrunc,fsync 2>/dev/null; then
        echo "immortal-record $seq" >&3
        seq=$((seq + 1))
    else
        echo "immortal-record-failed $seq" >&3
        sleep 1
    fi
    sleep "$interval"
done
)SH";

std::string start_records_workload(const std::string& disk_serial, std::uint64_t first, int interval_ms) {
  // The disk and port may have been added a moment ago (hot-plugged into a libvirt domain):
  // looked for during up to 20 s.
  return fmt::format("mkdir -p /run && cat > /run/immortal-records <<'IMMORTAL_RECORDS_EOF'\n{0}IMMORTAL_RECORDS_EOF\n"
                     "dev=; port=; tries=0; while [ $tries -lt 100 ]; do "
                     "for b in /sys/block/*; do [ \"$(cat $b/serial 2>/dev/null)\" = {1} ] && dev=/dev/${{b##*/}}; done; "
                     "for p in /sys/class/virtio-ports/*; do [ \"$(cat $p/name 2>/dev/null)\" = {2} ] && port=/dev/${{p##*/}}; done; "
                     "[ -b \"$dev\" ] && [ -c \"$port\" ] && break; tries=$((tries + 1)); sleep 0.2; done; "
                     "[ -b \"$dev\" ] || {{ echo 'no records disk (virtio serial {1})'; exit 3; }}; "
                     "[ -c \"$port\" ] || {{ echo 'no records port (virtio-serial {2})'; exit 3; }}; "
                     "sh /run/immortal-records \"$dev\" \"$port\" {3} {4}.{5:03} </dev/null >/dev/null 2>&1 &",
                     kRecordsScript, disk_serial, kRecordsPort, first, interval_ms / 1000, interval_ms % 1000);
}

RecordCheck check_records(const std::string& disk_image, std::uint64_t from, std::uint64_t to, std::size_t limit) {
  RecordCheck c;
  if (from == 0 || to < from) return c;
  UniqueFd fd(::open(disk_image.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd) fail(ExitCode::failure, "cannot read the records disk \"{}\": {}", disk_image, std::strerror(errno));
  char sector[kRecordBytes];
  for (std::uint64_t seq = from; seq <= to; ++seq) {
    ++c.checked;
    ssize_t n = ::pread(fd.get(), sector, sizeof sector, static_cast<off_t>(seq * kRecordBytes));
    std::string want = record_text(seq);
    bool intact = n == static_cast<ssize_t>(sizeof sector) && std::memcmp(sector, want.data(), want.size()) == 0;
    for (std::size_t i = want.size(); intact && i < sizeof sector; ++i) intact = sector[i] == 0;
    if (!intact) {
      ++c.lost;
      if (c.examples.size() < limit) c.examples.push_back(seq);
    }
  }
  return c;
}

}  // namespace immortal::vmm
