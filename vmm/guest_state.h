// What the supervised guest is doing, as the supervisor sees it. Every change goes through
// GuestStatus::change, which checks it against the table of allowed moves (guest_state.cc): an
// illegal one is reported as a bug (the instance carries on in the new state), never silent.
//
//   starting → booting → running ⇄ hung
//                         running → crashed → recovering → running        (resumed, verified)
//                                   crashed → rebooting → running          (after the new hello)
//   any → shut off
#pragma once

#include <cstdint>
#include <functional>
#include <string>

namespace immortal::vmm {

enum class GuestState {
  starting,    // the VM is being created
  booting,     // resumed, waiting for the agent's first hello
  running,     // up and healthy as far as we know
  hung,        // no heartbeat for the hang timeout, recovery off (left alone)
  crashed,     // a crash caught, the guest stopped (or frozen) while we decide
  recovering,  // repaired and resumed; the verification window is open
  rebooting,   // reset (by us or the guest), waiting for the new boot's hello
  shut_off,    // powered off or gone
};

// The names status and events use ("shut off" as virsh says it).
const char* to_string(GuestState state);
bool transition_allowed(GuestState from, GuestState to);

class GuestStatus {
 public:
  using Report = std::function<void(const std::string& bug)>;
  explicit GuestStatus(Report report_bug) : report_bug_(std::move(report_bug)) {}

  GuestState get() const { return state_; }
  bool is(GuestState s) const { return state_ == s; }
  // Moves to `to`; `why` names the cause for a bug report if the move is not an allowed one.
  void change(GuestState to, const char* why);
  // How many times the guest entered `crashed`: a request can tell whether a crash came while it
  // waited (an injection whose victim crashed the guest before the agent answered).
  std::uint64_t crashes() const { return crashes_; }

 private:
  GuestState state_ = GuestState::starting;
  std::uint64_t crashes_ = 0;
  Report report_bug_;
};

}  // namespace immortal::vmm
