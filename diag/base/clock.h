// Time as the whole project writes it: wall-clock stamps in UTC with milliseconds for events,
// reports and profiles, and durations on the monotonic clock in milliseconds.
#pragma once

#include <chrono>
#include <string>

namespace immortal {

// "2026-11-23T10:00:00.123Z"
std::string utc_now();

inline double ms_since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
}

}  // namespace immortal
