// Reads an instance's event log as its supervisor appends to it (events --follow, inject
// --wait). The log file is where every event is written first; inotify on the instance's
// directory says when it grew (or was replaced by a new run of the instance).
#pragma once

#include "base/unique_fd.h"

#include <nlohmann/json.hpp>

#include <chrono>
#include <cstdint>
#include <string>
#include <vector>

namespace immortal::vmm {

class EventFollower {
 public:
  // from_end: only events written from now on; else the log's last MiB first. Throws
  // Error(ExitCode::no_instance) when there is neither a running instance nor a log.
  EventFollower(std::string root, std::string name, bool from_end);
  // The events written since the last call, waiting up to `wait` for the first of them (or for
  // the instance to end). A line cut short (a supervisor killed mid-write) is skipped.
  std::vector<nlohmann::json> next(std::chrono::milliseconds wait);
  // True once the instance has ended for good (its VM gone, or let go of) and its whole log has
  // been returned. Its supervisor dying is not the end: the next one (attach) writes on.
  bool ended() const { return ended_; }

 private:
  std::vector<nlohmann::json> read_new();

  std::string root_, name_, path_;
  UniqueFd watch_;
  std::uint64_t offset_ = 0;
  std::string partial_;
  bool ended_ = false;
  bool skip_first_line_ = false;  // reading began in the middle of the log
  bool detached_ = false;  // the last supervisor let go of the VM (and none took it since)
};

}  // namespace immortal::vmm
