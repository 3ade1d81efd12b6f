// `--on-event CMD`: runs CMD (with /bin/sh -c) for every event the supervisor emits, the event
// as one JSON line on its standard input and IMMORTAL_EVENT / IMMORTAL_INSTANCE in its
// environment — for paging, chat notifications, ticket systems. The supervisor never waits for
// a hook: the event is put in a sealed memfd the hook reads as stdin, hooks run in the
// background (at most kMaxRunning at once; more are dropped and counted), and one that runs
// longer than kTimeLimit is killed. Its output goes to the instance's hooks.log.
#pragma once

#include <nlohmann/json.hpp>

#include <sys/types.h>

#include <chrono>
#include <cstdint>
#include <string>
#include <vector>

namespace immortal::vmm {

class EventHook {
 public:
  static constexpr std::size_t kMaxRunning = 8;
  static constexpr std::chrono::seconds kTimeLimit{60};

  EventHook(std::string command, std::string instance, std::string log_path)
      : command_(std::move(command)), instance_(std::move(instance)), log_path_(std::move(log_path)) {}
  ~EventHook();  // kills what still runs (the supervisor is ending)
  EventHook(const EventHook&) = delete;
  EventHook& operator=(const EventHook&) = delete;

  // Starts the hook for one event (as written to the event log). Never throws: a hook that
  // cannot start is counted in dropped().
  void fire(const nlohmann::json& event);
  // Reaps hooks that ended and kills those over their time (called every loop turn).
  void reap();
  std::uint64_t started() const { return started_; }
  std::uint64_t failed() const { return failed_; }    // ended with a non-zero status or a signal
  std::uint64_t dropped() const { return dropped_; }  // not started: too many running, or fork failed

 private:
  struct Running {
    pid_t pid;
    std::chrono::steady_clock::time_point started;
  };
  std::string command_, instance_, log_path_;
  std::vector<Running> running_;
  std::uint64_t started_ = 0, failed_ = 0, dropped_ = 0;
};

}  // namespace immortal::vmm
