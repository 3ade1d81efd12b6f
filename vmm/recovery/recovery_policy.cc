#include "recovery/recovery_policy.h"

#include "base/error.h"

#include <charconv>

namespace immortal::vmm {

const std::set<std::string>& RecoveryPolicy::recoverable_kinds() {
  static const std::set<std::string> kinds{"oops", "bug", "warn", "panic", "text-corruption", "soft-lockup", "hung-task",
                                               "stack-overflow"};
  return kinds;
}

void RecoveryPolicy::set_limit(const std::string& text) {
  auto slash = text.find('/');
  unsigned n = 0, seconds = 0;
  auto parse = [](std::string_view s, unsigned& out) {
    auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), out);
    return ec == std::errc() && p == s.data() + s.size();
  };
  if (slash == std::string::npos || !parse(std::string_view(text).substr(0, slash), n) ||
      !parse(std::string_view(text).substr(slash + 1), seconds) || seconds == 0 || seconds > 7 * 86400)
    fail(ExitCode::usage, "--recovery-limit wants COUNT/SECONDS (e.g. 20/600), not \"{}\"", text);
  max_recoveries = n;
  window = std::chrono::seconds(seconds);
}

std::size_t RecoveryBudget::used(Clock::time_point now) {
  while (!used_.empty() && now - used_.front() > policy_.window) used_.pop_front();
  return used_.size();
}

bool RecoveryBudget::available(Clock::time_point now) { return used(now) < policy_.max_recoveries; }

}  // namespace immortal::vmm
