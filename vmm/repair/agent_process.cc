#include "repair/agent_process.h"

#include "base/error.h"
#include "base/sealed_memfd.h"
#include "base/terminal_text.h"

#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <fmt/format.h>

#include <cstdio>

namespace immortal::vmm {

pid_t start_agent_process(const std::vector<std::string>& args, const std::vector<int>& fds) {
  // Everything the child needs is made before it exists: it shares our memory until execv.
  std::vector<std::string> copy = args;
  std::vector<char*> argv;
  for (auto& a : copy) argv.push_back(a.data());
  argv.push_back(nullptr);
  std::vector<int> moved(fds.size(), -1);
  pid_t parent = ::getpid();
  // vfork, not fork: fork write-protects every private page of the supervisor so that the next
  // write to each faults (about 15 µs a page here, under nested virtualisation). An agent is
  // started for every bundle, so memory prepared for the next pause (a snapshot's page index)
  // was faulted in again inside it: 512 faults, 7 ms, for a 2 GiB guest. Our signal handlers
  // must not run in the child (it would run them on our memory): every signal stays blocked
  // until the child has put them back to their defaults.
  sigset_t all, before;
  sigfillset(&all);
  ::pthread_sigmask(SIG_SETMASK, &all, &before);
  pid_t pid = ::vfork();
  if (pid != 0) {
    int saved = errno;
    ::pthread_sigmask(SIG_SETMASK, &before, nullptr);
    if (pid < 0) fail_os(ExitCode::failure, "vfork " + args.at(0), saved);
    return pid;
  }
  // The child: only async-signal-safe calls, nothing of ours written but `moved`.
  struct sigaction dfl = {};
  dfl.sa_handler = SIG_DFL;
  for (int s = 1; s < NSIG; ++s) {
    struct sigaction now = {};
    if (::sigaction(s, nullptr, &now) == 0 && now.sa_handler != SIG_IGN && now.sa_handler != SIG_DFL)
      ::sigaction(s, &dfl, nullptr);
  }
  ::prctl(PR_SET_PDEATHSIG, SIGKILL);
  if (::getppid() != parent) ::_exit(1);
  ::setpgid(0, 0);
  sigset_t none;
  sigemptyset(&none);
  ::sigprocmask(SIG_SETMASK, &none, nullptr);
  int null = ::open("/dev/null", O_RDWR | O_CLOEXEC);
  // Above the numbers they go to first, then into place (dup2 clears close-on-exec).
  for (std::size_t i = 0; i < fds.size(); ++i) moved[i] = ::fcntl(fds[i] >= 0 ? fds[i] : null, F_DUPFD_CLOEXEC, 64);
  for (std::size_t i = 0; i < fds.size(); ++i) ::dup2(moved[i], static_cast<int>(i));
  ::close_range(static_cast<unsigned>(fds.size()), ~0u, 0);
  ::execv(argv[0], argv.data());
  ::_exit(127);
}

UniqueFd reopen_read_only(int fd) {
  char path[64];
  std::snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
  return UniqueFd(::open(path, O_RDONLY | O_CLOEXEC));
}

Doorbell make_doorbell() {
  int pair[2];
  if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, pair) != 0) fail_os(ExitCode::failure, "socketpair", errno);
  return {UniqueFd(pair[0]), UniqueFd(pair[1])};
}

UniqueFd sealed_memfd_with(const std::string& name, const std::string& data) {
  UniqueFd fd = sealed_memfd(name, data.size());
  std::size_t done = 0;
  while (done < data.size()) {
    ssize_t n = ::pwrite(fd.get(), data.data() + done, data.size() - done, static_cast<off_t>(done));
    if (n <= 0) fail_os(ExitCode::failure, "write a memfd", errno);
    done += static_cast<std::size_t>(n);
  }
  return fd;
}

std::string agent_ending(int wait_status) {
  if (WIFSIGNALED(wait_status))
    return WTERMSIG(wait_status) == SIGSYS ? "made a system call its sandbox forbids"
                                           : fmt::format("was killed by signal {}", WTERMSIG(wait_status));
  if (!WIFEXITED(wait_status) || WEXITSTATUS(wait_status) == 0) return "";
  return WEXITSTATUS(wait_status) == 127 ? "cannot be run" : fmt::format("failed (exit status {})", WEXITSTATUS(wait_status));
}

std::string agent_failure(const std::string& why, int wait_status, int log_fd) {
  if (WIFSIGNALED(wait_status) && WTERMSIG(wait_status) == SIGSYS) return why + " (it " + agent_ending(wait_status) + ")";
  std::string said = last_log_line(log_fd);
  return said.empty() ? why : why + ": " + said;
}

nlohmann::json ram_layout_json(const Machine::RamFile& ram) {
  nlohmann::json segments = nlohmann::json::array();
  for (const auto& s : ram.segments)
    segments.push_back({{"guest_physical", s.guest_physical}, {"file_offset", s.file_offset}, {"size", s.size}});
  return {{"ram_size", ram.size}, {"ram", std::move(segments)}};
}

UniqueFd agent_log_memfd(const std::string& name) {
  UniqueFd fd(static_cast<int>(::memfd_create(name.c_str(), MFD_CLOEXEC)));
  if (!fd) fail_os(ExitCode::failure, "memfd_create", errno);
  return fd;
}

std::string last_log_line(int log_fd) {
  char tail[512] = {};
  off_t size = ::lseek(log_fd, 0, SEEK_END);
  off_t from = size > static_cast<off_t>(sizeof tail - 1) ? size - static_cast<off_t>(sizeof tail - 1) : 0;
  ssize_t n = ::pread(log_fd, tail, sizeof tail - 1, from);
  std::string said = n > 0 ? std::string(tail, static_cast<std::size_t>(n)) : "";
  while (!said.empty() && (said.back() == '\n' || said.back() == '\r')) said.pop_back();
  if (auto nl = said.rfind('\n'); nl != std::string::npos) said = said.substr(nl + 1);
  return terminal_safe(said);
}

}  // namespace immortal::vmm
