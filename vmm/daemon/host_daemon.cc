#include "daemon/host_daemon.h"

#include "base/error.h"
#include "base/unique_fd.h"
#include "instance.h"
#include "libvirt/domain_preparation.h"
#include "libvirt/libvirt_connection.h"
#include "libvirt/libvirt_events.h"

#include <fmt/format.h>
#include <libvirt/libvirt.h>
#include <libvirt/virterror.h>

#include <poll.h>
#include <signal.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <chrono>
#include <iostream>
#include <map>
#include <thread>

namespace immortal::vmm {

namespace {

using Clock = std::chrono::steady_clock;
constexpr auto kRescan = std::chrono::seconds(30);       // a look at every domain, in case an event was missed
constexpr auto kFirstRetry = std::chrono::seconds(5);    // a supervisor that died is started again after this,
constexpr auto kLongestRetry = std::chrono::minutes(5);  // doubling up to this
constexpr auto kDetachGrace = std::chrono::seconds(40);  // for the supervisors to let go at SIGTERM

void say(const std::string& line) { std::cerr << "immortal daemon: " << line << "\n" << std::flush; }

// systemd's readiness protocol (sd_notify(3)): one datagram to $NOTIFY_SOCKET, nothing without it.
void notify_systemd(const std::string& state) {
  const char* path = std::getenv("NOTIFY_SOCKET");
  if (!path || !*path) return;
  sockaddr_un address{};
  address.sun_family = AF_UNIX;
  std::string p = path;
  if (p.size() >= sizeof address.sun_path) return;
  std::copy(p.begin(), p.end(), address.sun_path);
  if (p[0] == '@') address.sun_path[0] = '\0';  // an abstract socket
  UniqueFd fd(::socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0));
  if (!fd) return;
  ::sendto(fd.get(), state.data(), state.size(), MSG_NOSIGNAL, reinterpret_cast<sockaddr*>(&address),
           static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + p.size()));
}

struct Domain {
  std::string name;
  pid_t supervisor = 0;
  int failures = 0;
  Clock::time_point retry_at{};
  bool noted = false;  // "not prepared", "name taken": said once
};

class HostDaemon {
 public:
  explicit HostDaemon(DaemonOptions options) : o_(std::move(options)), root_(runtime_root(o_.runtime_dir)) {}

  int run() {
    sigset_t mask;
    sigemptyset(&mask);
    for (int s : {SIGINT, SIGTERM, SIGHUP, SIGCHLD}) sigaddset(&mask, s);
    ::sigprocmask(SIG_BLOCK, &mask, nullptr);
    signals_ = UniqueFd(::signalfd(-1, &mask, SFD_CLOEXEC | SFD_NONBLOCK));
    if (!signals_) fail_os(ExitCode::failure, "signalfd", errno);
    connect();
    scan();
    start_due();
    notify_systemd(fmt::format("READY=1\nSTATUS=protecting {} domains of {}", running(), connection_->uri()));
    say(fmt::format("watching {} (runtime dir {}); {} prepared domains protected", connection_->uri(), root_, running()));
    auto next_scan = Clock::now() + kRescan;
    while (!stopping_) {
      pollfd fds[2] = {{signals_.get(), POLLIN, 0}, {inbox_->fd(), POLLIN, 0}};
      ::poll(fds, 2, 1000);
      handle_signals();
      reap();
      handle_events();
      if (Clock::now() >= next_scan || rescan_) {
        scan();
        next_scan = Clock::now() + kRescan;
        rescan_ = false;
      }
      start_due();
    }
    return shut_down();
  }

 private:
  void connect() {
    inbox_ = std::make_shared<LibvirtEventInbox>();
    connection_ = std::make_unique<LibvirtConnection>(o_.uri, /*with_events=*/true);
    watch_lifecycle(connection_->raw(), nullptr, inbox_);
    watch_close(connection_->raw(), inbox_);
  }

  int running() const {
    return static_cast<int>(std::count_if(domains_.begin(), domains_.end(), [](auto& d) { return d.second.supervisor > 0; }));
  }

  // Every running domain: those that are prepared and have no supervisor get one now.
  void scan() {
    virDomainPtr* list = nullptr;
    int n = virConnectListAllDomains(connection_->raw(), &list, VIR_CONNECT_LIST_DOMAINS_ACTIVE);
    if (n < 0) {
      say("cannot list the domains: " + std::string(virGetLastErrorMessage() ? virGetLastErrorMessage() : "?"));
      return;
    }
    for (int i = 0; i < n; ++i) {
      char uuid[VIR_UUID_STRING_BUFLEN] = {};
      const char* name = virDomainGetName(list[i]);
      if (virDomainGetUUIDString(list[i], uuid) == 0 && name) {
        Domain& d = domains_[uuid];
        d.name = name;
        if (d.supervisor == 0 && d.failures == 0) d.retry_at = Clock::now();
      }
      virDomainFree(list[i]);
    }
    std::free(list);
  }

  bool protectable(const std::string& uuid, Domain& d) {
    try {
      LibvirtDomain domain = connection_->domain(uuid);
      if (!domain.active()) return false;
      if (!domain_is_prepared(domain.xml(false))) {
        if (!std::exchange(d.noted, true)) say("domain " + d.name + " is not prepared for immortal (immortal prepare): left alone");
        return false;
      }
      check_instance_name(d.name);
      if (instance_running(root_, d.name)) {
        if (!std::exchange(d.noted, true)) say("domain " + d.name + " already has a supervisor (attached by hand): left to it");
        return false;
      }
      return true;
    } catch (const Error& e) {
      if (!std::exchange(d.noted, true)) say("domain " + d.name + " cannot be protected: " + e.what());
      return false;
    }
  }

  void start_due() {
    auto now = Clock::now();
    for (auto& [uuid, d] : domains_) {
      if (d.supervisor > 0 || d.retry_at == Clock::time_point{} || now < d.retry_at) continue;
      d.retry_at = {};
      if (!protectable(uuid, d)) continue;
      std::vector<std::string> args{o_.self};
      if (!o_.runtime_dir.empty()) args.insert(args.end(), {"--runtime-dir", o_.runtime_dir});
      args.insert(args.end(), {"attach", "--libvirt", uuid, "-c", connection_->uri(), "--name", d.name});
      // A domain that has just started boots before its agent answers: give it a boot's time.
      if (std::find(o_.protection.begin(), o_.protection.end(), "--boot-timeout") == o_.protection.end())
        args.insert(args.end(), {"--boot-timeout", "300"});
      args.insert(args.end(), o_.protection.begin(), o_.protection.end());
      pid_t pid = ::fork();
      if (pid == 0) {
        sigset_t none;
        sigemptyset(&none);
        ::sigprocmask(SIG_SETMASK, &none, nullptr);
        std::vector<char*> argv;
        for (auto& a : args) argv.push_back(a.data());
        argv.push_back(nullptr);
        ::execv(argv[0], argv.data());
        ::_exit(127);
      }
      if (pid < 0) {
        say("cannot start a supervisor for " + d.name + ": " + std::strerror(errno));
        d.retry_at = now + kFirstRetry;
        continue;
      }
      d.supervisor = pid;
      d.noted = false;
      say(fmt::format("protecting domain {} (supervisor pid {})", d.name, pid));
    }
  }

  void reap() {
    int status = 0;
    for (pid_t pid; (pid = ::waitpid(-1, &status, WNOHANG)) > 0;) {
      for (auto& [uuid, d] : domains_) {
        if (d.supervisor != pid) continue;
        d.supervisor = 0;
        std::string how = WIFEXITED(status) ? fmt::format("exit status {}", WEXITSTATUS(status))
                                            : fmt::format("signal {}", WTERMSIG(status));
        bool active = false;
        try {
          active = !stopping_ && connection_->domain(uuid).active();
        } catch (const Error&) {
        }
        if (!active) {
          say(fmt::format("the supervisor of {} ended ({}); the domain is not running", d.name, how));
          d.failures = 0;
          continue;
        }
        // The domain runs on without protection: start a supervisor again, later each time.
        auto wait = std::min<std::chrono::seconds>(kFirstRetry * (1 << std::min(d.failures, 6)), kLongestRetry);
        ++d.failures;
        d.retry_at = Clock::now() + wait;
        say(fmt::format("the supervisor of {} ended ({}) while the domain runs: attaching again in {} s", d.name, how,
                        wait.count()));
      }
    }
  }

  void handle_events() {
    for (auto& item : inbox_->take()) {
      if (item.source == LibvirtEventInbox::Item::Source::closed) {
        say("lost the connection to libvirt: connecting again");
        reconnect();
        continue;
      }
      if (item.source != LibvirtEventInbox::Item::Source::lifecycle || item.domain_uuid.empty()) continue;
      if (item.event == VIR_DOMAIN_EVENT_STARTED) {
        Domain& d = domains_[item.domain_uuid];
        d.name = item.domain;
        d.failures = 0;
        d.noted = false;
        if (d.supervisor == 0) d.retry_at = Clock::now();  // started, restored, migrated in
      }
    }
  }

  void reconnect() {
    connection_.reset();
    for (int attempt = 0; attempt < 120 && !stopping_; ++attempt) {
      try {
        connect();
        rescan_ = true;
        return;
      } catch (const Error& e) {
        if (attempt == 0) say(std::string("libvirt is not back yet: ") + e.what());
        std::this_thread::sleep_for(std::chrono::milliseconds(500));
        handle_signals();
      }
    }
    fail(ExitCode::libvirt, "libvirt at {} did not come back within a minute", o_.uri.empty() ? kDefaultLibvirtUri : o_.uri);
  }

  void handle_signals() {
    signalfd_siginfo info{};
    while (::read(signals_.get(), &info, sizeof info) == static_cast<ssize_t>(sizeof info)) {
      if (info.ssi_signo == SIGHUP) rescan_ = true;
      else if (info.ssi_signo != SIGCHLD) stopping_ = true;
    }
  }

  int shut_down() {
    notify_systemd("STOPPING=1");
    say(fmt::format("stopping: {} supervisors let go of their domains, which run on", running()));
    for (auto& [uuid, d] : domains_)
      if (d.supervisor > 0) ::kill(d.supervisor, SIGTERM);
    auto deadline = Clock::now() + kDetachGrace;
    while (running() > 0 && Clock::now() < deadline) {
      reap();
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    for (auto& [uuid, d] : domains_)
      if (d.supervisor > 0) ::kill(d.supervisor, SIGKILL);  // it let the domain run on all the same
    return 0;
  }

  DaemonOptions o_;
  std::string root_;
  UniqueFd signals_;
  std::shared_ptr<LibvirtEventInbox> inbox_;
  std::unique_ptr<LibvirtConnection> connection_;
  std::map<std::string, Domain> domains_;  // by UUID
  bool stopping_ = false;
  bool rescan_ = false;
};

}  // namespace

int run_daemon(const DaemonOptions& options) { return HostDaemon(options).run(); }

}  // namespace immortal::vmm
