// The supervisor's event log: one JSON object per line (crash, analysis, plan, resumed,
// recovered, reboot, quarantine, hang …), each with a UTC time and the crash id it belongs to.
// Kept in the instance directory (events.jsonl) and, with --event-log, appended to a file that
// outlives the instance. docs/recovery.md lists the events.
#pragma once

#include "base/clock.h"

#include <nlohmann/json.hpp>

#include <cstdint>
#include <deque>
#include <map>
#include <vector>
#include <string>

namespace immortal::vmm {

class EventLog {
 public:
  explicit EventLog(std::vector<std::string> paths) : paths_(std::move(paths)) {}
  // Adds "time" and "event" and appends the line to every file (a write error is reported once
  // through the returned text, never thrown: the guest matters more than the log).
  std::string append(const std::string& event, nlohmann::json fields);
  const std::deque<nlohmann::json>& recent() const { return recent_; }
  // Reads the last few events of an earlier supervisor of this instance back from its log.
  void reload(const std::string& path);
  // The events of one of the last few crashes (those with its "crash" id), oldest first: what
  // the crash's bundle carries.
  std::vector<nlohmann::json> of_crash(std::uint64_t crash) const;

 private:
  std::vector<std::string> paths_;
  std::deque<nlohmann::json> recent_;  // the last few, for status
  std::map<std::uint64_t, std::vector<nlohmann::json>> by_crash_;  // the last few crashes'
  bool reported_ = false;
};


}  // namespace immortal::vmm
