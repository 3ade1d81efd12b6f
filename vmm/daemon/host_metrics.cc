#include "daemon/host_metrics.h"

#include "base/error.h"
#include "control/control_channel.h"
#include "control/metrics.h"
#include "instance.h"

#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <vector>

namespace immortal::vmm {

namespace {
// A scrape waits this long for each supervisor; one busy with a crash answers a scrape later.
constexpr auto kAnswerTime = std::chrono::seconds(2);
}  // namespace

HostMetrics::HostMetrics(const std::string& listen, std::string runtime_root)
    : root_(std::move(runtime_root)), server_(listen, [this] { return render(); }) {}

void HostMetrics::set_unprotected(std::set<std::string> names) {
  std::lock_guard lock(mutex_);
  unprotected_ = std::move(names);
}

std::string HostMetrics::render() const {
  std::vector<std::string> parts;
  std::vector<std::string> running = running_instances(root_);
  std::map<std::string, std::string> answers;
  for (const auto& name : running) {
    try {
      json answer = control_call(root_ + "/" + name + "/control.sock", {{"command", "metrics"}}, Deadline::in(kAnswerTime));
      if (answer.contains("exposition") && answer["exposition"].is_string()) answers[name] = answer["exposition"];
    } catch (const Error&) {
      // Busy: its last answer stands in. Gone since the listing: the next scrape knows.
    }
  }
  std::string down;
  {
    std::lock_guard lock(mutex_);
    for (const auto& name : running) {
      if (auto it = answers.find(name); it != answers.end()) last_[name] = it->second;
      if (auto it = last_.find(name); it != last_.end()) parts.push_back(it->second);
    }
    std::erase_if(last_, [&](const auto& entry) { return std::find(running.begin(), running.end(), entry.first) == running.end(); });
    for (const auto& name : unprotected_)
      if (std::find(running.begin(), running.end(), name) == running.end())
        down += fmt::format("immortal_up{{guest=\"{}\"}} 0\n", prometheus_label(name));
  }
  if (!down.empty())
    parts.push_back("# HELP immortal_up 1 while a supervisor protects the guest.\n# TYPE immortal_up gauge\n" + down);
  return merge_expositions(parts);
}

}  // namespace immortal::vmm
