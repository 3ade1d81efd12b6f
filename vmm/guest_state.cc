#include "guest_state.h"

#include <fmt/format.h>

namespace immortal::vmm {

const char* to_string(GuestState state) {
  switch (state) {
    case GuestState::starting: return "starting";
    case GuestState::booting: return "booting";
    case GuestState::running: return "running";
    case GuestState::hung: return "hung";
    case GuestState::crashed: return "crashed";
    case GuestState::recovering: return "recovering";
    case GuestState::rebooting: return "rebooting";
    case GuestState::shut_off: return "shut off";
  }
  return "?";
}

bool transition_allowed(GuestState from, GuestState to) {
  using S = GuestState;
  if (from == to || to == S::shut_off) return true;  // staying put, or the VM went away
  switch (from) {
    case S::starting: return to == S::booting;
    // A crash or reset while booting; the first hello.
    case S::booting: return to == S::running || to == S::crashed || to == S::rebooting;
    case S::running: return to == S::crashed || to == S::hung || to == S::rebooting;
    case S::hung: return to == S::running || to == S::crashed || to == S::rebooting;
    case S::crashed: return to == S::recovering || to == S::rebooting;
    // Verified; a new crash during the window; a failed check reboots.
    case S::recovering: return to == S::running || to == S::crashed || to == S::rebooting;
    // The new boot's hello; a crash while booting again.
    case S::rebooting: return to == S::running || to == S::crashed;
    case S::shut_off: return false;
  }
  return false;
}

void GuestStatus::change(GuestState to, const char* why) {
  if (!transition_allowed(state_, to) && report_bug_)
    report_bug_(fmt::format("bug: the guest state changed from {} to {} ({}), a move not in the table", to_string(state_),
                            to_string(to), why));
  if (to == GuestState::crashed && state_ != GuestState::crashed) ++crashes_;
  state_ = to;
}

}  // namespace immortal::vmm
