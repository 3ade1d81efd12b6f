#include "daemon/host_daemon.h"

#include "base/error.h"
#include "base/unique_fd.h"
#include "daemon/host_metrics.h"
#include "daemon/systemd_notify.h"
#include "instance.h"
#include "instance_definitions.h"
#include "instance_state.h"
#include "libvirt/domain_preparation.h"
#include "libvirt/libvirt_connection.h"
#include "libvirt/libvirt_events.h"

#include <fmt/format.h>
#include <libvirt/libvirt.h>
#include <libvirt/virterror.h>

#include <poll.h>
#include <signal.h>
#include <sys/signalfd.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <iostream>
#include <map>
#include <set>
#include <thread>

namespace immortal::vmm {

namespace {

using Clock = std::chrono::steady_clock;
constexpr auto kRescan = std::chrono::seconds(30);       // a look at every guest, in case an event was missed
constexpr auto kFirstRetry = std::chrono::seconds(5);    // a supervisor that died is started again after this,
constexpr auto kLongestRetry = std::chrono::minutes(5);  // doubling up to this
constexpr auto kReconnect = std::chrono::seconds(3);     // libvirt not reachable: try again after this
// For the supervisors to let go of their domains, and to power our own guests off (each asks
// its guest and waits 5 s, then ends the VM), at SIGTERM.
constexpr auto kStopGrace = std::chrono::seconds(40);

void say(const std::string& line) { std::cerr << "immortal daemon: " << line << "\n" << std::flush; }

// One guest the daemon keeps a supervisor for: a libvirt domain (by UUID) or an instance of
// ours that asked for autostart (by name).
struct Guarded {
  std::string name;                 // the instance's name (a domain's: its libvirt name)
  pid_t supervisor = 0;             // our child, while it runs
  int failures = 0;                 // supervisors that died in a row while the guest ran
  Clock::time_point retry_at{};     // when to start one; epoch: not due
  bool boot = false;                // an autostart instance not yet started by this daemon: boot it
  bool noted = false;               // "not prepared", "name taken": said once
};

class HostDaemon {
 public:
  explicit HostDaemon(DaemonOptions options)
      : o_(std::move(options)), root_(runtime_root(o_.runtime_dir)), store_(config_root(o_.config_dir)) {}

  int run() {
    sigset_t mask;
    sigemptyset(&mask);
    for (int s : {SIGINT, SIGTERM, SIGHUP, SIGCHLD}) sigaddset(&mask, s);
    ::sigprocmask(SIG_BLOCK, &mask, nullptr);
    signals_ = UniqueFd(::signalfd(-1, &mask, SFD_CLOEXEC | SFD_NONBLOCK));
    if (!signals_) fail_os(ExitCode::failure, "signalfd", errno);
    if (!o_.metrics_listen.empty()) metrics_ = std::make_unique<HostMetrics>(o_.metrics_listen, root_);
    if (o_.libvirt) try_connect();
    scan(/*first=*/true);
    start_due();
    std::string watching = !o_.libvirt ? "no libvirt connection" : connection_ ? connection_->uri() : "libvirt (not reachable yet)";
    notify_systemd(fmt::format("READY=1\nSTATUS=protecting {} guests ({})", running(), watching));
    say(fmt::format("watching {} and the definitions in {} (runtime dir {}); {} guests protected", watching,
                    store_.directory(), root_, running()));
    if (metrics_) say("metrics of every instance at http://" + o_.metrics_listen + "/metrics");
    auto next_scan = Clock::now() + kRescan;
    while (!stopping_) {
      pollfd fds[2] = {{signals_.get(), POLLIN, 0}, {inbox_ ? inbox_->fd() : -1, POLLIN, 0}};
      ::poll(fds, 2, 1000);
      handle_signals();
      reap();
      handle_events();
      if (o_.libvirt && !connection_ && Clock::now() >= next_connect_) try_connect();
      if (Clock::now() >= next_scan || rescan_) {
        scan(/*first=*/false);
        next_scan = Clock::now() + kRescan;
        rescan_ = false;
      }
      start_due();
      publish_unprotected();
    }
    return shut_down();
  }

 private:
  // libvirtd may start after us, restart or go away: while it is not reachable our own
  // instances stay protected and a connection is tried again every few seconds.
  void try_connect() {
    try {
      auto inbox = std::make_shared<LibvirtEventInbox>();
      auto connection = std::make_unique<LibvirtConnection>(o_.uri, /*with_events=*/true);
      watch_lifecycle(connection->raw(), nullptr, inbox);
      watch_close(connection->raw(), inbox);
      inbox_ = std::move(inbox);
      connection_ = std::move(connection);
      if (std::exchange(libvirt_missing_, false)) say("connected to libvirt at " + connection_->uri());
      rescan_ = true;
    } catch (const Error& e) {
      if (!std::exchange(libvirt_missing_, true))
        say(std::string("libvirt is not reachable (trying again every few seconds; --no-libvirt: do not): ") + e.what());
      next_connect_ = Clock::now() + kReconnect;
    }
  }

  int running() const {
    auto live = [](auto& entry) { return entry.second.supervisor > 0; };
    return static_cast<int>(std::count_if(domains_.begin(), domains_.end(), live) +
                            std::count_if(instances_.begin(), instances_.end(), live));
  }

  void scan(bool first) {
    if (connection_) scan_domains();
    scan_definitions(first);
  }

  // Every running domain: those that are prepared and have no supervisor get one now.
  void scan_domains() {
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
        Guarded& d = domains_[uuid];
        d.name = name;
        if (d.supervisor == 0 && d.failures == 0) d.retry_at = Clock::now();
      }
      virDomainFree(list[i]);
    }
    std::free(list);
  }

  // Our own instances marked autostart: booted at the daemon's start (as libvirt autostarts
  // domains when it starts), and later taken over whenever their VM runs without a supervisor.
  void scan_definitions(bool first) {
    std::vector<std::string> problems;
    for (const auto& definition : store_.all(&problems)) {
      if (!definition.autostart) continue;
      Guarded& g = instances_[definition.name];
      g.name = definition.name;
      if (g.supervisor > 0 || g.retry_at != Clock::time_point{}) continue;
      if (first) g.boot = true;
      if (g.boot || (g.failures == 0 && orphaned(g.name))) g.retry_at = Clock::now();
    }
    if (first)
      for (const auto& p : problems) say("a definition is left alone: " + p);
  }

  bool orphaned(const std::string& name) {
    try {
      return orphaned_instance(root_, name).has_value();
    } catch (const Error& e) {
      return false;  // a damaged state.json: `immortal attach` by hand says what is wrong
    }
  }

  bool domain_protectable(const std::string& uuid, Guarded& d) {
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

  std::vector<std::string> base_arguments() const {
    std::vector<std::string> args{o_.self};
    if (!o_.runtime_dir.empty()) args.insert(args.end(), {"--runtime-dir", o_.runtime_dir});
    if (!o_.config_dir.empty()) args.insert(args.end(), {"--config-dir", o_.config_dir});
    return args;
  }

  pid_t spawn(const std::vector<std::string>& args, const std::string& what) {
    pid_t pid = ::fork();
    if (pid == 0) {
      sigset_t none;
      sigemptyset(&none);
      ::sigprocmask(SIG_SETMASK, &none, nullptr);
      std::vector<char*> argv;
      for (const auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
      argv.push_back(nullptr);
      ::execv(argv[0], argv.data());
      ::_exit(127);
    }
    if (pid < 0) say("cannot start a supervisor for " + what + ": " + std::strerror(errno));
    return pid;
  }

  void start_due() {
    auto now = Clock::now();
    auto due = [&](Guarded& g) {
      if (g.supervisor > 0 || g.retry_at == Clock::time_point{} || now < g.retry_at) return false;
      g.retry_at = {};
      return true;
    };
    for (auto& [uuid, d] : domains_) {
      if (!connection_ || !due(d) || !domain_protectable(uuid, d)) continue;
      std::vector<std::string> args = base_arguments();
      args.insert(args.end(), {"attach", "--libvirt", uuid, "-c", connection_->uri(), "--name", d.name});
      // A domain that has just started boots before its agent answers: give it a boot's time.
      if (std::find(o_.protection.begin(), o_.protection.end(), "--boot-timeout") == o_.protection.end())
        args.insert(args.end(), {"--boot-timeout", "300"});
      args.insert(args.end(), o_.protection.begin(), o_.protection.end());
      started(d, spawn(args, "domain " + d.name), "domain " + d.name);
    }
    for (auto& [name, g] : instances_) {
      if (!due(g)) continue;
      std::vector<std::string> args = base_arguments();
      if (instance_running(root_, name)) {
        if (!std::exchange(g.noted, true)) say("instance " + name + " already has a supervisor: left to it");
        g.boot = false;
        continue;
      }
      if (orphaned(name)) {
        args.insert(args.end(), {"attach", name});  // its VM ran on: take it over, with its history
      } else if (g.boot) {
        args.insert(args.end(), {"start", name, "--foreground"});
      } else {
        continue;  // its guest was stopped or powered off: that is the operator's to undo
      }
      g.boot = false;
      started(g, spawn(args, "instance " + name), "instance " + name);
    }
  }

  void started(Guarded& g, pid_t pid, const std::string& what) {
    if (pid < 0) {
      g.retry_at = Clock::now() + kFirstRetry;
      return;
    }
    g.supervisor = pid;
    g.noted = false;
    say(fmt::format("protecting {} (supervisor pid {})", what, pid));
  }

  void reap() {
    int status = 0;
    for (pid_t pid; (pid = ::waitpid(-1, &status, WNOHANG)) > 0;) {
      std::string how = WIFEXITED(status) ? fmt::format("exit status {}", WEXITSTATUS(status))
                                          : fmt::format("signal {}", WTERMSIG(status));
      for (auto& [uuid, d] : domains_) {
        if (d.supervisor != pid) continue;
        d.supervisor = 0;
        bool active = false;
        try {
          active = !stopping_ && connection_ && connection_->domain(uuid).active();
        } catch (const Error&) {
        }
        ended(d, "domain " + d.name, how, active);
      }
      for (auto& [name, g] : instances_) {
        if (g.supervisor != pid) continue;
        g.supervisor = 0;
        ended(g, "instance " + name, how, !stopping_ && orphaned(name));
      }
    }
  }

  // A supervisor ended. While its guest runs on, unprotected, one is started again, later each time.
  void ended(Guarded& g, const std::string& what, const std::string& how, bool guest_runs) {
    if (!guest_runs) {
      if (!stopping_) say(fmt::format("the supervisor of {} ended ({}); the guest is not running", what, how));
      g.failures = 0;
      return;
    }
    auto wait = std::min<std::chrono::seconds>(kFirstRetry * (1 << std::min(g.failures, 6)), kLongestRetry);
    ++g.failures;
    g.retry_at = Clock::now() + wait;
    say(fmt::format("the supervisor of {} ended ({}) while the guest runs: attaching again in {} s", what, how, wait.count()));
  }

  void handle_events() {
    if (!inbox_) return;
    for (auto& item : inbox_->take()) {
      if (item.source == LibvirtEventInbox::Item::Source::closed) {
        say("lost the connection to libvirt: connecting again");
        connection_.reset();
        inbox_.reset();
        libvirt_missing_ = true;
        next_connect_ = Clock::now();
        return;
      }
      if (item.source != LibvirtEventInbox::Item::Source::lifecycle || item.domain_uuid.empty()) continue;
      if (item.event == VIR_DOMAIN_EVENT_STARTED) {
        Guarded& d = domains_[item.domain_uuid];
        d.name = item.domain;
        d.failures = 0;
        d.noted = false;
        if (d.supervisor == 0) d.retry_at = Clock::now();  // started, restored, migrated in
      }
    }
  }

  void handle_signals() {
    signalfd_siginfo info{};
    while (::read(signals_.get(), &info, sizeof info) == static_cast<ssize_t>(sizeof info)) {
      if (info.ssi_signo == SIGHUP) rescan_ = true;
      else if (info.ssi_signo != SIGCHLD) stopping_ = true;
    }
  }

  // For the metrics: the guests meant to be protected that have no supervisor now.
  void publish_unprotected() {
    if (!metrics_) return;
    std::set<std::string> names;
    for (const auto* group : {&domains_, &instances_})
      for (const auto& [key, g] : *group)
        if (g.supervisor == 0 && g.retry_at != Clock::time_point{} && g.failures > 0) names.insert(g.name);
    metrics_->set_unprotected(std::move(names));
  }

  int shut_down() {
    notify_systemd("STOPPING=1");
    say(fmt::format("stopping: {} supervisors let go of their domains, which run on, or power their own guests off",
                    running()));
    for (const auto* group : {&domains_, &instances_})
      for (const auto& [key, g] : *group)
        if (g.supervisor > 0) ::kill(g.supervisor, SIGTERM);
    auto deadline = Clock::now() + kStopGrace;
    while (running() > 0 && Clock::now() < deadline) {
      reap();
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    for (const auto* group : {&domains_, &instances_})
      for (const auto& [key, g] : *group)
        if (g.supervisor > 0) ::kill(g.supervisor, SIGKILL);  // a domain runs on all the same
    metrics_.reset();
    return 0;
  }

  DaemonOptions o_;
  std::string root_;
  DefinitionStore store_;
  UniqueFd signals_;
  std::unique_ptr<HostMetrics> metrics_;
  std::shared_ptr<LibvirtEventInbox> inbox_;
  std::unique_ptr<LibvirtConnection> connection_;
  std::map<std::string, Guarded> domains_;    // by UUID
  std::map<std::string, Guarded> instances_;  // ours, by name
  bool stopping_ = false;
  bool rescan_ = false;
  bool libvirt_missing_ = false;     // said once until it is back
  Clock::time_point next_connect_{};
};

}  // namespace

int run_daemon(const DaemonOptions& options) { return HostDaemon(options).run(); }

}  // namespace immortal::vmm
