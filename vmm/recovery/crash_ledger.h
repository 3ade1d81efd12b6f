// The instance's account of its crashes: how many were caught, recovered and rebooted, and the
// last one with its decision and outcome (for `status`, and persisted with the instance).
#pragma once

#include <nlohmann/json.hpp>

#include <cstdint>
#include <optional>
#include <string>

namespace immortal::vmm {

struct CrashEntry {
  std::uint64_t crash = 0;
  std::string time, summary;
  std::string decision;  // resume | reboot | freeze
  std::string reason;
  std::string outcome;   // recovered, rebooted, … ("" while not known)
  std::string failed_check;
  std::string bundle;    // the bundle's path once written
};

class CrashLedger {
 public:
  // A new crash id (1, 2, 3 …); hangs count as crashes.
  std::uint64_t open_crash() { return ++crashes_; }
  void record(CrashEntry entry) { last_ = std::move(entry); }
  // Outcomes of the crash with this id (ignored when it is not the last one).
  void set_outcome(std::uint64_t crash, const std::string& outcome, const std::string& failed_check = "");
  void bundle_written(std::uint64_t crash, const std::string& path);
  // What an earlier supervisor of this instance counted (a restart or an upgrade).
  void restore(std::uint64_t crashes, std::uint64_t recoveries, std::uint64_t reboots, std::optional<CrashEntry> last) {
    crashes_ = crashes;
    recoveries_ = recoveries;
    reboots_ = reboots;
    last_ = std::move(last);
  }
  void count_recovery() { ++recoveries_; }
  void count_reboot() { ++reboots_; }

  std::uint64_t crashes() const { return crashes_; }
  std::uint64_t recoveries() const { return recoveries_; }
  std::uint64_t reboots() const { return reboots_; }
  const std::optional<CrashEntry>& last() const { return last_; }
  nlohmann::json last_json() const;  // null when there was none

 private:
  std::uint64_t crashes_ = 0, recoveries_ = 0, reboots_ = 0;
  std::optional<CrashEntry> last_;
};

}  // namespace immortal::vmm
