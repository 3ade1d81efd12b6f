#include "recovery/recovery_watch.h"

#include "base/clock.h"
#include "base/error.h"

#include <fmt/format.h>

namespace immortal::vmm {

namespace {
WatchVerdict failed(std::string check, std::string detail) {
  WatchVerdict v;
  v.kind = WatchVerdict::Kind::failed;
  v.check = std::move(check);
  v.detail = std::move(detail);
  return v;
}
}  // namespace

RecoveryWatch::RecoveryWatch(std::uint64_t crash, std::chrono::milliseconds verify_timeout,
                             std::uint64_t heartbeats_at_resume, std::unique_ptr<RecoveryVerifier> memory_checks)
    : crash_(crash),
      resumed_at_(Clock::now()),
      deadline_(Deadline::in(verify_timeout).at()),
      verify_timeout_(verify_timeout),
      heartbeats_(heartbeats_at_resume),
      memory_(std::move(memory_checks)),
      next_look_(Clock::now()) {}

double RecoveryWatch::since_resume_ms() const { return ms_since(resumed_at_); }

WatchVerdict RecoveryWatch::step(AgentChannel& agent, LiveKernel& kernel,
                                 const std::function<void(const std::string&)>& say) {
  if (!probe_->sent && agent.heartbeats() > heartbeats_ && !agent.closed()) {
    // The agent's loop runs again; now a real round trip through a new process.
    probe_->sent = true;
    try {
      agent.exec({"true"}, 10'000, [probe = probe_](const agent::ExecResult* result, const std::string& error) {
        probe->ok = result && result->exit_code == 0;
        if (!result) probe->error = error;
      });
    } catch (const Error& e) {
      probe_->ok = false;
      probe_->error = e.what();
    }
  }
  if (probe_->ok && !*probe_->ok)
    return failed("agent", "the health probe failed: " + (probe_->error.empty() ? "exit status not 0" : probe_->error));
  if (probe_->ok && !agent_ms_) agent_ms_ = since_resume_ms();
  if (!agent_ms_ && Clock::now() >= deadline_)
    return failed("agent", fmt::format("no heartbeat and health probe within {} ms after resuming", verify_timeout_.count()));
  if (memory_ && Clock::now() >= next_look_) {
    next_look_ = Clock::now() + std::chrono::seconds(1);
    try {
      if (auto bad = memory_->look(kernel.get())) return failed(bad->name, bad->detail);
    } catch (const std::exception& e) {
      // The profile's kernel view cannot be had: the agent's proof still stands on its own.
      say(std::string("the recovered guest cannot be read: ") + e.what());
      memory_.reset();
    }
  }
  if (!agent_ms_ || (memory_ && !memory_->window_over())) return {};
  WatchVerdict done;
  done.checks = nlohmann::json::array();
  done.checks.push_back({{"check", "agent"}, {"passed", true},
                         {"detail", fmt::format("heartbeat and a new process {:.0f} ms after the resume", *agent_ms_)}});
  if (memory_) {
    try {
      for (const auto& c : memory_->conclude(kernel.get())) {
        if (!c.passed) return failed(c.name, c.detail);
        done.checks.push_back({{"check", c.name}, {"passed", true}, {"detail", c.detail}});
      }
    } catch (const std::exception& e) {
      done.checks.push_back({{"check", "window"}, {"passed", true}, {"detail", std::string("not concluded: ") + e.what()}});
    }
  }
  done.kind = WatchVerdict::Kind::verified;
  done.agent_ms = *agent_ms_;
  done.window_ms = since_resume_ms();
  return done;
}

nlohmann::json RecoveryWatch::progress() const {
  nlohmann::json v = memory_ ? memory_->progress() : nlohmann::json::object();
  v["crash"] = crash_;
  v["agent_proved"] = agent_ms_.has_value();
  return v;
}

}  // namespace immortal::vmm
