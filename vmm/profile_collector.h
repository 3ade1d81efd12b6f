// Collects the healthy-guest profile (diag/profile/guest_profile.h) through the agent: at boot
// and again whenever the guest's module list changes. Runs inside the supervisor's poll loop
// (one file request at a time) and saves the profile into the instance directory.
#pragma once

#include "agent_channel.h"
#include "profile/guest_profile.h"

#include <nlohmann/json.hpp>

#include <deque>
#include <functional>
#include <string>

namespace immortal::vmm {

class ProfileCollector {
 public:
  ProfileCollector(AgentChannel& agent, std::string dir, std::function<void(const std::string&)> say);

  // Starts a collection unless one runs; generation is the agent's modules generation it reflects.
  void collect(std::uint64_t generation);
  bool busy() const { return busy_; }
  std::uint64_t generation() const { return generation_; }
  // Which profile is current: 1, 2, 3 … for each one saved (0: none yet). Two profiles taken in
  // the same second are still two (their taken_at may be equal).
  std::uint64_t number() const { return number_; }
  nlohmann::json status() const;

 private:
  void next();
  void finish(const std::string& error);

  AgentChannel& agent_;
  std::string dir_;
  std::function<void(const std::string&)> say_;
  bool busy_ = false;
  std::uint64_t generation_ = 0;
  GuestProfile building_;
  std::deque<std::function<void()>> steps_;
  Clock::time_point started_{};
  std::string last_error_;
  std::string taken_at_;
  std::uint64_t number_ = 0;
  double last_seconds_ = 0;
  std::size_t symbols_ = 0;
};

}  // namespace immortal::vmm
