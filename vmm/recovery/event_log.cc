#include "recovery/event_log.h"

#include "base/io.h"

#include <fcntl.h>
#include <unistd.h>

#include <fmt/format.h>

#include <cerrno>
#include <cstring>

namespace immortal::vmm {

namespace {
constexpr std::size_t kRecentEvents = 32;
constexpr std::size_t kCrashesKept = 8;
constexpr std::size_t kEventsPerCrash = 128;
}

void EventLog::reload(const std::string& path) {
  for (const auto& line : last_lines(path, kRecentEvents)) {
    auto j = nlohmann::json::parse(line, nullptr, false);
    if (j.is_object()) recent_.push_back(std::move(j));
  }
  while (recent_.size() > kRecentEvents) recent_.pop_front();
}

std::vector<nlohmann::json> EventLog::of_crash(std::uint64_t crash) const {
  auto it = by_crash_.find(crash);
  return it == by_crash_.end() ? std::vector<nlohmann::json>{} : it->second;
}

std::string EventLog::append(const std::string& event, nlohmann::json fields) {
  nlohmann::json line = {{"time", utc_now()}, {"event", event}};
  for (auto& [k, v] : fields.items()) line[k] = v;
  std::string text = line.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) + "\n";
  recent_.push_back(line);
  if (recent_.size() > kRecentEvents) recent_.pop_front();
  if (auto c = line.find("crash"); c != line.end() && c->is_number_unsigned() && c->get<std::uint64_t>()) {
    auto& list = by_crash_[c->get<std::uint64_t>()];
    if (list.size() < kEventsPerCrash) list.push_back(line);
    while (by_crash_.size() > kCrashesKept) by_crash_.erase(by_crash_.begin());
  }
  std::string problem;
  for (const auto& path : paths_) {
    int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
    if (fd < 0 || ::write(fd, text.data(), text.size()) != static_cast<ssize_t>(text.size()))
      problem = fmt::format("cannot append to the event log {}: {}", path, std::strerror(errno));
    if (fd >= 0) ::close(fd);
  }
  if (problem.empty() || reported_) return "";
  reported_ = true;
  return problem;
}

}  // namespace immortal::vmm
