#include "repair/agent_process.h"

#include "base/error.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/prctl.h>
#include <unistd.h>

namespace immortal::vmm {

pid_t start_agent_process(const std::vector<std::string>& args, const std::vector<int>& fds) {
  // Everything the child needs is made before fork: after it, only async-signal-safe calls.
  std::vector<std::string> copy = args;
  std::vector<char*> argv;
  for (auto& a : copy) argv.push_back(a.data());
  argv.push_back(nullptr);
  std::vector<int> moved(fds.size(), -1);
  pid_t parent = ::getpid();
  pid_t pid = ::fork();
  if (pid < 0) fail_os(ExitCode::failure, "fork " + args.at(0), errno);
  if (pid > 0) return pid;
  ::prctl(PR_SET_PDEATHSIG, SIGKILL);
  if (::getppid() != parent) ::_exit(1);
  ::setpgid(0, 0);
  sigset_t all;
  sigemptyset(&all);
  ::sigprocmask(SIG_SETMASK, &all, nullptr);
  int null = ::open("/dev/null", O_RDWR | O_CLOEXEC);
  // Above the numbers they go to first, then into place (dup2 clears close-on-exec).
  for (std::size_t i = 0; i < fds.size(); ++i) moved[i] = ::fcntl(fds[i] >= 0 ? fds[i] : null, F_DUPFD_CLOEXEC, 64);
  for (std::size_t i = 0; i < fds.size(); ++i) ::dup2(moved[i], static_cast<int>(i));
  ::close_range(static_cast<unsigned>(fds.size()), ~0u, 0);
  ::execv(argv[0], argv.data());
  ::_exit(127);
}

}  // namespace immortal::vmm
