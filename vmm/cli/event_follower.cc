#include "cli/event_follower.h"

#include "base/error.h"
#include "instance.h"

#include <poll.h>
#include <sys/inotify.h>
#include <unistd.h>

#include <fstream>
#include <string_view>
#include <utility>

namespace immortal::vmm {

namespace {
constexpr std::uint64_t kBacklogBytes = 1u << 20;  // where a follower starts reading an old log
}

EventFollower::EventFollower(std::string root, std::string name, bool from_end)
    : root_(std::move(root)), name_(std::move(name)), path_(root_ + "/" + name_ + "/events.jsonl") {
  if (!instance_running(root_, name_) && ::access(path_.c_str(), R_OK) != 0)
    fail(ExitCode::no_instance, "no instance named \"{}\" (running, or with an event log left)", name_);
  std::string dir = root_ + "/" + name_;
  watch_ = UniqueFd(::inotify_init1(IN_CLOEXEC | IN_NONBLOCK));
  if (!watch_ || ::inotify_add_watch(watch_.get(), dir.c_str(), IN_MODIFY | IN_CREATE | IN_MOVED_TO) < 0)
    fail_os(ExitCode::failure, "watch " + dir, errno);
  std::ifstream in(path_, std::ios::binary | std::ios::ate);
  auto size = in ? static_cast<std::uint64_t>(in.tellg()) : 0;
  offset_ = from_end ? size : size > kBacklogBytes ? size - kBacklogBytes : 0;
  skip_first_line_ = !from_end && offset_ > 0;  // it starts mid-line: a fragment
}

std::vector<nlohmann::json> EventFollower::read_new() {
  std::vector<nlohmann::json> events;
  std::ifstream in(path_, std::ios::binary);
  if (!in) return events;
  in.seekg(0, std::ios::end);
  auto size = static_cast<std::uint64_t>(in.tellg());
  if (size < offset_) offset_ = 0, partial_.clear();  // a new log: the instance was started again
  in.seekg(static_cast<std::streamoff>(offset_));
  std::string chunk(size - offset_, '\0');
  in.read(chunk.data(), static_cast<std::streamsize>(chunk.size()));
  offset_ += static_cast<std::uint64_t>(in.gcount());
  partial_.append(chunk.data(), static_cast<std::size_t>(in.gcount()));
  std::size_t start = 0;
  for (std::size_t nl; (nl = partial_.find('\n', start)) != std::string::npos; start = nl + 1) {
    if (std::exchange(skip_first_line_, false)) continue;
    auto e = nlohmann::json::parse(std::string_view(partial_).substr(start, nl - start), nullptr, false);
    if (e.is_object()) events.push_back(std::move(e));
  }
  partial_.erase(0, start);
  return events;
}

std::vector<nlohmann::json> EventFollower::next(std::chrono::milliseconds wait) {
  auto deadline = std::chrono::steady_clock::now() + wait;
  for (;;) {
    bool unsupervised = !instance_running(root_, name_);  // before reading: what it wrote last is read
    auto events = read_new();
    for (const auto& e : events) {
      std::string what = e.value("event", "");
      if (what == "detached") detached_ = true;
      else if (what == "attached" || what == "started") detached_ = false;
    }
    // Over for good: its VM is gone (no state left to attach to) or it let go of it. A
    // supervisor that died (SIGKILL) leaves both behind: the next one's events will follow.
    if (unsupervised && (::access((root_ + "/" + name_ + "/state.json").c_str(), F_OK) != 0 || detached_))
      ended_ = true;
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
    if (!events.empty() || ended_ || left.count() <= 0) return events;
    pollfd p{watch_.get(), POLLIN, 0};
    ::poll(&p, 1, static_cast<int>(std::min<long>(left.count(), 500)));  // a change, or a look whether it still runs
    char drain[4096];
    while (::read(watch_.get(), drain, sizeof drain) > 0) {
    }
  }
}

}  // namespace immortal::vmm
