// The campaign's data workload as the host sees it. In the guest, a small script writes record N
// into sector N of a raw disk, fsyncs it and only then says "immortal-record N" on a virtio-serial
// port of its own (kRecordsPort), which the host appends to a file. The host reads those
// acknowledgements as they come (with the time it read them) and checks the disk image itself,
// independently of the guest: every acknowledged record must be on disk, intact. A record lost is
// one the guest was told was durable and is not.
#pragma once

#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace immortal::vmm {

inline constexpr std::uint64_t kRecordBytes = 512;
// The virtio-serial port the workload acknowledges on (`run --channel`).
inline constexpr char kRecordsPort[] = "org.immortal.campaign.records";

using WallTime = std::chrono::system_clock::time_point;

// A file of the guest's output as the campaign watches it, read as it grows (QEMU appends; a file
// that shrank was rotated and is read again from its start): the workload's acknowledgements on
// its port, each with the time the host read it, and, on the serial console, the kernel's own
// reports of trouble (an oops, a BUG, a warning), which are all a stock kernel that did not
// panic leaves.
class GuestOutputWatch {
 public:
  explicit GuestOutputWatch(std::string path) : path_(std::move(path)) {}
  // Reads what was added.
  void poll();
  std::uint64_t highest() const { return highest_; }  // the highest record acknowledged (0: none)
  std::optional<WallTime> last_ack() const { return acks_.empty() ? std::nullopt : std::optional(acks_.back().second); }
  // The longest time between two acknowledgements read one after the other, from the last one
  // before `since` to the last one read: how long the workload stood still around a crash.
  std::optional<double> longest_gap_ms(WallTime since) const;
  std::size_t failed_writes() const { return failed_; }
  // Kernel reports read so far, and the first line of the latest.
  std::size_t kernel_reports() const { return reports_; }
  const std::string& last_report() const { return last_report_; }

 private:
  void take_line(const std::string& line, WallTime now);

  std::string path_;
  std::uint64_t offset_ = 0;
  std::string partial_;
  std::uint64_t highest_ = 0;
  std::size_t failed_ = 0;
  std::size_t reports_ = 0;
  std::string last_report_;
  std::vector<std::pair<std::uint64_t, WallTime>> acks_;  // (seq, time read), the newest kept
};

// The text record `seq` has in its sector.
std::string record_text(std::uint64_t seq);

// A guest shell command that writes the workload's script into the guest (any Linux with a POSIX
// sh, dd and a sleep that takes fractions: busybox or coreutils), finds the records disk by its
// virtio serial number and the port by its name (kRecordsPort) and starts the workload in the
// background from record `first`.
std::string start_records_workload(const std::string& disk_serial, std::uint64_t first, int interval_ms);

// Records from..to (inclusive) missing or damaged in the disk image: at most `limit` of them
// listed, all counted.
struct RecordCheck {
  std::uint64_t checked = 0;
  std::uint64_t lost = 0;
  std::vector<std::uint64_t> examples;
};
RecordCheck check_records(const std::string& disk_image, std::uint64_t from, std::uint64_t to, std::size_t limit = 16);

}  // namespace immortal::vmm
