// What became of a crash, read from the instance's event log as its supervisor writes it: the
// first crash after the follower started, then its outcome (recovered, rebooted, kdump). Used by
// `inject --wait` and by campaigns.
#pragma once

#include "cli/event_follower.h"

#include <nlohmann/json.hpp>

#include <chrono>
#include <functional>
#include <vector>

namespace immortal::vmm {

// The result: "outcome" (recovered, rebooted, kdump, no-crash: none within crash_wait,
// instance-ended, unknown: no outcome within wait, stopped: `stop` said so), and from the events
// "crash", "summary", "caught_by", "kind", "context", "intercept_to_resume_ms", "verify_ms",
// "reason", "verification_failed". `stop` is asked between reads of the log (every 50 ms at
// most), told whether the crash was seen yet; every event read is also added to `seen`.
nlohmann::json follow_crash_outcome(EventFollower& follower, std::chrono::seconds wait, std::chrono::seconds crash_wait,
                                    const std::function<bool(bool crash_seen)>& stop = {},
                                    std::vector<nlohmann::json>* seen = nullptr);

}  // namespace immortal::vmm
