// Fuzz target: what crosses the repair mailbox. The agent's answer is produced from a crashed,
// possibly hostile guest's memory, and the agent itself may be subverted, so the supervisor's
// parsers of it — the answer's plan (plan_from_json), and the mailbox header the agent writes —
// must refuse cleanly; the agent's parsers of requests (RepairRequest::from_json) and of the
// repair payload's archive (read_payload) too.
#include "base/error.h"
#include "engine/repair_plan.h"
#include "engine/repair_service.h"
#include "protocol/mailbox.h"
#include "protocol/payload.h"

#include <nlohmann/json.hpp>

#include <cstdint>
#include <cstring>
#include <vector>

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using namespace immortal;
  std::string text(reinterpret_cast<const char*>(data), size);
  auto j = nlohmann::json::parse(text, nullptr, false);
  if (!j.is_discarded()) {
    for (const auto* part : {&j, j.is_object() && j.contains("plan") ? &j["plan"] : &j}) {
      try {
        auto plan = repair::plan_from_json(*part);
        (void)plan.to_json();
      } catch (const Error&) {
      }
    }
    try {
      auto request = repair::RepairRequest::from_json(j);
      (void)request.to_json();
    } catch (const Error&) {
    }
  }
  // The same bytes as a repair payload.
  try {
    for (const auto& [name, bytes] : repair::read_payload(text)) (void)bytes.size();
  } catch (const Error&) {
  }
  // The same bytes as a mailbox header written by the agent.
  static std::vector<std::uint64_t> box(repair::kMailboxSize / 8);
  std::memset(box.data(), 0, 4096);
  std::memcpy(box.data(), data, std::min<std::size_t>(size, 4096));
  repair::Mailbox host(box.data());
  (void)host.agent_state();
  (void)host.agent_status();
  for (std::uint64_t seq : {0ull, 1ull}) {
    try {
      (void)host.take_response(seq);
    } catch (const std::runtime_error&) {
    }
  }
  return 0;
}
