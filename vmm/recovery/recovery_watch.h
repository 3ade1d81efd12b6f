// The verification window of one recovered crash (docs/recovery.md, "Verification"): the agent
// must prove the guest runs (a heartbeat after the resume, then a new process), and the guest's
// memory is watched for the window (recovery_verifier.h). step() is called every loop turn and
// says when the recovery is proven, or which check failed.
#pragma once

#include "agent_channel.h"
#include "live_kernel.h"
#include "recovery/recovery_verifier.h"

#include <functional>
#include <memory>
#include <optional>
#include <string>

namespace immortal::vmm {

struct WatchVerdict {
  enum class Kind { watching, verified, failed } kind = Kind::watching;
  std::string check, detail;         // failed: which check and why
  nlohmann::json checks;             // verified: every check that passed
  double agent_ms = 0, window_ms = 0;
};

class RecoveryWatch {
 public:
  // memory_checks: nullptr when the guest cannot be watched from its memory (or no window).
  RecoveryWatch(std::uint64_t crash, std::chrono::milliseconds verify_timeout, std::uint64_t heartbeats_at_resume,
                std::unique_ptr<RecoveryVerifier> memory_checks);

  WatchVerdict step(AgentChannel& agent, LiveKernel& kernel, const std::function<void(const std::string&)>& say);
  std::uint64_t crash() const { return crash_; }
  bool agent_proved() const { return agent_ms_.has_value(); }
  double since_resume_ms() const;
  nlohmann::json progress() const;

 private:
  struct Probe {  // shared with the agent's callback, which may outlive the watch
    bool sent = false;
    std::optional<bool> ok;
    std::string error;
  };
  std::uint64_t crash_;
  Clock::time_point resumed_at_, deadline_;
  std::chrono::milliseconds verify_timeout_;
  std::uint64_t heartbeats_;
  std::shared_ptr<Probe> probe_ = std::make_shared<Probe>();
  std::optional<double> agent_ms_;  // when the agent proved the guest runs
  std::unique_ptr<RecoveryVerifier> memory_;
  Clock::time_point next_look_;
};

}  // namespace immortal::vmm
