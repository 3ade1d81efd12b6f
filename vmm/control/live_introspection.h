// `immortal ps|lsmod|dmesg`: the host's views of a running guest, independent of the (possibly
// broken) guest agent. The lists are walked in guest memory, and guest memory is untrusted: the
// walk runs in a sandboxed introspection agent (immortal-repair-agent --introspect), one per
// request, never in the supervisor. The supervisor gives it guest RAM read-only and the newest
// profile, holds the guest paused only for the walk itself (the agent has parsed the profile
// and found the kernel before), and answers the request with what the agent said once checked
// (accept_introspection_answer). docs/protocol.md, "Introspection agent".
//
// Everything happens from the supervisor's loop: start() forks the agent and returns; poll()
// moves each request on without waiting, except during the walk (the guest is paused for it,
// at most budget::kIntrospectionPauseMs).
#pragma once

#include "base/io.h"
#include "base/unique_fd.h"
#include "control/control_server.h"
#include "machine.h"

#include <sys/types.h>

#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace immortal::vmm {

// What a request's answer may be: the part's shape as kernel_json.h makes it, every field of
// the right type and size, nothing else. Throws Error(bad_input) saying what is wrong.
json accept_introspection_answer(const std::string& part, std::string_view answer);

class LiveIntrospection {
 public:
  // agent: the immortal-repair-agent binary as configured (find_repair_agent); profile_dir:
  // where the newest profile is saved.
  LiveIntrospection(std::string agent, std::string profile_dir, Machine& machine);
  ~LiveIntrospection();
  LiveIntrospection(const LiveIntrospection&) = delete;
  LiveIntrospection& operator=(const LiveIntrospection&) = delete;

  // Starts an agent for part (tasks, modules, dmesg); the request is answered from poll().
  void start(ControlRequest request, const std::string& part);
  // The agents' descriptors, for the loop's poll set.
  void add_to(std::vector<pollfd>& fds) const;
  void poll();
  std::size_t running() const { return jobs_.size(); }

 private:
  struct Job;
  // true when the job is finished (answered).
  bool step(Job& job);
  void walk(Job& job);
  void finish(Job& job, const std::string& failure);
  std::string agent_, profile_dir_;
  Machine& machine_;
  std::vector<std::unique_ptr<Job>> jobs_;
};

}  // namespace immortal::vmm
