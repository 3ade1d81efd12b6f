#include "control/event_hook.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

namespace immortal::vmm {

EventHook::~EventHook() {
  for (const auto& r : running_) {
    ::kill(-r.pid, SIGKILL);
    ::waitpid(r.pid, nullptr, 0);
  }
}

void EventHook::fire(const nlohmann::json& event) {
  reap();
  if (running_.size() >= kMaxRunning) {
    ++dropped_;
    return;
  }
  // The event in a memfd, sealed: the hook reads it at its pace, nothing waits on a pipe.
  std::string line = event.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) + "\n";
  int input = ::memfd_create("immortal-event", MFD_CLOEXEC | MFD_ALLOW_SEALING);
  if (input < 0 || ::write(input, line.data(), line.size()) != static_cast<ssize_t>(line.size()) ||
      ::lseek(input, 0, SEEK_SET) != 0 ||
      ::fcntl(input, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_WRITE | F_SEAL_SEAL) != 0) {
    if (input >= 0) ::close(input);
    ++dropped_;
    return;
  }
  int log = ::open(log_path_.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC | O_NOFOLLOW, 0600);
  std::string name = event.value("event", "");
  pid_t pid = ::fork();
  if (pid == 0) {
    ::setpgid(0, 0);  // its own group: a time-out kills whatever it started too
    sigset_t none;
    sigemptyset(&none);
    ::sigprocmask(SIG_SETMASK, &none, nullptr);
    ::dup2(input, 0);
    int out = log >= 0 ? log : ::open("/dev/null", O_WRONLY);
    ::dup2(out, 1);
    ::dup2(out, 2);
    ::setenv("IMMORTAL_EVENT", name.c_str(), 1);
    ::setenv("IMMORTAL_INSTANCE", instance_.c_str(), 1);
    ::execl("/bin/sh", "sh", "-c", command_.c_str(), static_cast<char*>(nullptr));
    ::_exit(127);
  }
  ::close(input);
  if (log >= 0) ::close(log);
  if (pid > 0) ::setpgid(pid, pid);  // as the child does: whichever runs first
  if (pid < 0) {
    ++dropped_;
    return;
  }
  ++started_;
  running_.push_back({pid, std::chrono::steady_clock::now()});
}

void EventHook::reap() {
  auto now = std::chrono::steady_clock::now();
  for (auto it = running_.begin(); it != running_.end();) {
    if (now - it->started > kTimeLimit) ::kill(-it->pid, SIGKILL);
    int status = 0;
    if (::waitpid(it->pid, &status, WNOHANG) == it->pid) {
      if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) ++failed_;
      it = running_.erase(it);
    } else {
      ++it;
    }
  }
}

}  // namespace immortal::vmm
