// Collects the healthy-guest profile (diag/profile/guest_profile.h) through the agent: at boot
// and again whenever the guest's module list changes. Runs inside the supervisor's poll loop
// (one file request at a time), saves the profile into the instance directory (for the repair
// image and the operator) and hands it on in memory: current() is typed and immutable, and its
// number tells one profile from the next.
#pragma once

#include "agent_channel.h"
#include "profile_source.h"
#include "profile/guest_profile.h"

#include <nlohmann/json.hpp>

#include <deque>
#include <functional>
#include <memory>
#include <string>

namespace immortal::vmm {

class ProfileCollector final : public ProfileSource {
 public:
  ProfileCollector(AgentChannel& agent, std::string dir, std::function<void(const std::string&)> say);

  // Starts a collection unless one runs; generation is the agent's modules generation it reflects.
  void collect(std::uint64_t generation);
  bool busy() const override { return busy_; }
  std::uint64_t generation() const { return generation_; }
  // The boot the last collection was started in (its agent hello's boot id).
  const std::string& boot_id() const { return boot_id_; }
  // Which profile is current: 1, 2, 3 … for each one saved (0: none yet). Two profiles taken in
  // the same second are still two (their taken_at may be equal).
  std::uint64_t number() const override { return number_; }
  // Takes a profile saved earlier (by the supervisor before a restart) as the current one.
  void adopt(std::shared_ptr<const PackedProfile> profile, std::uint64_t generation);
  // The newest profile saved (nullptr before the first); never changed once handed out.
  std::shared_ptr<const PackedProfile> current() const override { return current_; }
  const std::string& dir() const override { return dir_; }
  // Why the last collection failed ("" when it did not).
  const std::string& last_error() const override { return last_error_; }
  nlohmann::json status() const;

 private:
  void next();
  void finish(const std::string& error);

  AgentChannel& agent_;
  std::string dir_;
  std::function<void(const std::string&)> say_;
  bool busy_ = false;
  std::uint64_t module_btf_bytes_ = 0;  // of the profile being built
  std::uint64_t generation_ = 0;
  std::string boot_id_;
  GuestProfile building_;
  std::deque<std::function<void()>> steps_;
  Clock::time_point started_{};
  std::string last_error_;
  std::string taken_at_;
  std::uint64_t number_ = 0;
  std::shared_ptr<const PackedProfile> current_;
  double last_seconds_ = 0;
  std::size_t symbols_ = 0;
};

}  // namespace immortal::vmm
