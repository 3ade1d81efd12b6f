// What the integration tests read of an instance as JSON: its status and its whole event log
// (events.jsonl in the runtime directory, not only the last events `immortal events` shows).
// Kept apart from harness.h so that the harness itself needs no JSON library.
#pragma once

#include "harness.h"

#include "control/control_channel.h"

#include <nlohmann/json.hpp>

#include <chrono>
#include <fstream>
#include <string>
#include <vector>

namespace immortal::test {

// The instance's status as `immortal status NAME --json` prints it, asked over its control
// socket from this process ({} when nobody answers). The tests poll it in loops, and each start of
// the sanitized CLI costs a quarter of a second of a core; `status` itself is tested through the
// CLI (cli_test.cc).
inline nlohmann::json status_json(const std::string& name) {
  try {
    auto j = immortal::vmm::control_call(control_socket_of(name), {{"command", "status"}},
                                         immortal::Deadline::in(std::chrono::seconds(20)));
    j.erase("ok");
    return j;
  } catch (const std::exception&) {
    return nlohmann::json::object();
  }
}

// The instance's state ("running", "crashed", …), "gone" once status no longer knows it.
inline std::string instance_state(const std::string& name) {
  auto s = status_json(name);
  return s.empty() ? "gone" : s.value("state", "");
}

// recovery_state.crashes / recovered / reboots
inline std::uint64_t recovery_count(const nlohmann::json& status, const char* what) {
  return status.value("recovery_state", nlohmann::json::object()).value(what, std::uint64_t{0});
}

inline std::vector<nlohmann::json> event_log(const std::string& name) {
  std::vector<nlohmann::json> out;
  std::ifstream in(test_runtime_root() + "/" + name + "/events.jsonl");
  for (std::string line; std::getline(in, line);)
    if (auto j = nlohmann::json::parse(line, nullptr, false); !j.is_discarded()) out.push_back(j);
  return out;
}

inline nlohmann::json last_event_of(const std::string& name, const std::string& kind) {
  nlohmann::json last;
  for (const auto& e : event_log(name))
    if (e.value("event", "") == kind) last = e;
  return last;
}

}  // namespace immortal::test
