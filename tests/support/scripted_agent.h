// The guest's end of the agent channel, scripted by a test: it says hello, sends heartbeats
// when told, and answers the host's exec and spawn requests (exit status 0 by default).
#pragma once

#include "base/unique_fd.h"
#include "protocol/frame.h"

#include <string>
#include <vector>

namespace immortal::test {

class ScriptedAgent {
 public:
  ScriptedAgent();
  UniqueFd take_host_end() { return std::move(host_); }

  void hello(const std::string& boot_id, const std::string& release = "6.1.0-test");
  void heartbeat();
  // Reads what the host sent and answers it; returns the exec requests' argv seen this time.
  std::vector<std::vector<std::string>> answer();
  bool answer_execs = true;  // false: requests are read and left unanswered (a stuck guest)
  int exec_status = 0;

 private:
  void send(const std::string& bytes);
  UniqueFd host_, guest_;
  agent::FrameDecoder from_host_;
  std::uint64_t seq_ = 0;
};

}  // namespace immortal::test
