#include "cli/crash_outcome.h"

#include <cstdint>
#include <string>

namespace immortal::vmm {

using nlohmann::json;

json follow_crash_outcome(EventFollower& follower, std::chrono::seconds wait, std::chrono::seconds crash_wait,
                          const std::function<bool(bool)>& stop, std::vector<json>* seen) {
  json result = json::object();
  std::uint64_t crash = 0;
  std::string outcome;
  auto deadline = std::chrono::steady_clock::now() + wait;
  // A fault that has not crashed the guest within this did not (a quarantined entry point refuses it).
  auto crash_deadline = std::chrono::steady_clock::now() + std::min(wait, crash_wait);
  while (outcome.empty()) {
    auto now = std::chrono::steady_clock::now();
    if (now >= deadline) outcome = "unknown";
    else if (!crash && now >= crash_deadline) outcome = "no-crash";
    else if (follower.ended()) outcome = "instance-ended";
    else if (stop && stop(crash != 0)) outcome = "stopped";
    if (!outcome.empty()) break;
    for (const auto& e : follower.next(std::chrono::milliseconds(50))) {
      if (!e.is_object()) continue;
      if (seen) seen->push_back(e);
      if (!outcome.empty()) continue;  // the rest of the batch only for `seen`
      std::string what = e.value("event", "");
      std::uint64_t id = e.contains("crash") && e["crash"].is_number_unsigned() ? e["crash"].get<std::uint64_t>() : 0;
      if (!crash && what == "crash" && id) {
        crash = id;
        result["crash"] = id;
        result["summary"] = e.value("summary", "");
        result["caught_by"] = e.value("caught_by", "");
        result["crash_time"] = e.value("time", "");
        if (e.contains("analysis") && e["analysis"].is_object()) {
          result["kind"] = e["analysis"].value("kind", "");
          result["context"] = e["analysis"].value("context", "");
        }
      }
      if (!crash || id != crash) continue;
      if (what == "resumed") result["intercept_to_resume_ms"] = e.value("intercept_to_resume_ms", 0.0);
      else if (what == "recovery-failed") result["verification_failed"] = e.value("reason", "");
      else if (what == "recovered") outcome = "recovered", result["verify_ms"] = e.value("verify_ms", 0.0);
      else if (what == "reboot") outcome = "rebooted", result["reason"] = e.value("reason", "");
      else if (what == "kdump") outcome = "kdump", result["reason"] = e.value("reason", "");
    }
  }
  result["outcome"] = outcome;
  return result;
}

}  // namespace immortal::vmm
