#include "upgrade.h"

#include "base/error.h"
#include "base/process_stat.h"
#include "control/control_channel.h"
#include "instance.h"
#include "instance_state.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <fmt/format.h>

#include <thread>

namespace immortal::vmm {

namespace {

// Runs `binary --runtime-dir ROOT attach NAME --detach` (it returns once its supervisor is up, or
// failed); its output goes to the instance's upgrade.log.
int run_attach(const std::string& binary, const std::string& root, const std::string& name, Deadline deadline,
               std::string& failure) {
  std::string log = root + "/" + name + "/upgrade.log";
  pid_t pid = ::fork();
  if (pid < 0) fail_os(ExitCode::failure, "fork", errno);
  if (pid == 0) {
    ::setsid();
    int out = ::open(log.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    int null = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
    ::dup2(null, 0);
    if (out >= 0) {
      ::dup2(out, 1);
      ::dup2(out, 2);
    }
    sigset_t none;
    sigemptyset(&none);
    ::sigprocmask(SIG_SETMASK, &none, nullptr);
    ::execl(binary.c_str(), binary.c_str(), "--runtime-dir", root.c_str(), "attach", name.c_str(), "--detach",
            static_cast<char*>(nullptr));
    ::_exit(127);
  }
  int status = 0;
  for (;;) {
    pid_t r = ::waitpid(pid, &status, WNOHANG);
    if (r == pid) break;
    if (deadline.expired()) {
      ::kill(-pid, SIGKILL);
      ::waitpid(pid, &status, 0);
      failure = "the new binary did not come up in time";
      return -1;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  int code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  if (code != 0) {
    std::string words;
    for (const auto& line : last_lines(log, 3)) words += (words.empty() ? "" : " | ") + line;
    failure = fmt::format("the new binary failed (exit status {}): {}", code, words.empty() ? "(no output)" : words);
  }
  return code;
}

}  // namespace

bool wait_for_exit(int pid, std::chrono::seconds deadline) {
  if (pid <= 0) return true;
  for (auto until = Deadline::in(deadline); process_running(pid);) {
    if (until.expired()) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  return true;
}

UpgradeOutcome hand_over(const std::string& binary, const std::string& root, const std::string& name,
                         std::chrono::seconds deadline, bool armed_required, const std::function<void()>& release,
                         const std::function<void()>& take_back, const std::function<void(const std::string&)>& say) {
  UpgradeOutcome out;
  auto until = Deadline::in(deadline);
  say(fmt::format("handing \"{}\" over to {}", name, binary));
  release();
  std::string failure;
  int new_pid = 0;
  if (run_attach(binary, root, name, until, failure) == 0) {
    // Up; now it must have armed interception (or say recovery is off) before the deadline.
    for (;;) {
      try {
        json s = control_call(root + "/" + name + "/control.sock", {{"command", "status"}}, Deadline::in(std::chrono::seconds(5)));
        new_pid = s.value("supervisor_pid", 0);
        bool armed = s.value("recovery_state", json::object()).value("armed", false);
        if (s.value("state", "") == "running" && (armed || !armed_required)) {
          out.upgraded = true;
          out.new_supervisor_pid = new_pid;
          out.detail = fmt::format("supervisor pid {} ({}) took over{}", new_pid, binary, armed ? ", interception armed" : "");
          return out;
        }
      } catch (const Error& e) {
        failure = std::string("the new supervisor does not answer: ") + e.what();
      }
      if (until.expired()) {
        if (failure.empty()) failure = "the new supervisor did not re-arm interception in time";
        break;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(200));
    }
  }
  // Rollback: the new supervisor (if any) goes; the guest never noticed either of them leave.
  if (new_pid <= 0) {
    // It may have written the state file before it stalled.
    try {
      if (auto st = InstanceState::load(root + "/" + name + "/state.json"); st && st->supervisor_pid != ::getpid())
        new_pid = st->supervisor_pid;
    } catch (const Error&) {
    }
  }
  if (new_pid > 0 && new_pid != ::getpid()) ::kill(new_pid, SIGKILL);
  for (auto wait = Deadline::in(std::chrono::seconds(10)); instance_running(root, name) && !wait.expired();)
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  say("upgrade rolled back: " + failure);
  take_back();
  out.detail = failure;
  return out;
}

}  // namespace immortal::vmm
