#include "supervisor.h"

#include "base/clock.h"
#include "base/error.h"
#include "engine/crash_analysis.h"
#include "engine/repair_plan.h"
#include "fault_catalogue.h"
#include "kernel/modules.h"
#include "kernel/orc_unwind.h"
#include "protocol/base64.h"
#include "recovery/plan_validation.h"
#include "report/kernel_json.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>

namespace immortal::vmm {

namespace {

// After a guest panic, time for its panic() to flush the console before we freeze the VM
// (it would only spin in panic's delay loop from then on).
constexpr auto kCrashConsoleGrace = std::chrono::milliseconds(1000);
constexpr auto kLaunchTimeout = std::chrono::seconds(30);
// From the agent's hello to armed crash interception (the profile takes ~2 s under TCG).
constexpr auto kArmTimeout = std::chrono::seconds(60);
constexpr auto kLoopTick = std::chrono::milliseconds(100);
constexpr std::size_t kMaxControlClients = 64;

double seconds_since(Clock::time_point t) {
  return std::chrono::duration<double>(Clock::now() - t).count();
}

}  // namespace

Supervisor::Supervisor(SupervisorOptions options, InstanceDir dir, MachineFactory factory)
    : options_(std::move(options)),
      dir_(std::move(dir)),
      factory_(std::move(factory)),
      events_([&] {
        std::vector<std::string> paths{dir_.file("events.jsonl")};
        if (!options_.event_log.empty()) paths.push_back(options_.event_log);
        return paths;
      }()),
      quarantine_(dir_.file("quarantine.json")),
      budget_(options_.recovery) {
  bundles_ = std::make_unique<BundleRecorder>(options_.bundles);
  if (!options_.say) options_.say = [](const std::string& line) { std::cerr << "immortal: " << line << "\n"; };
}

Supervisor::~Supervisor() {
  if (machine_) machine_->terminate(std::chrono::seconds(2));
}

int Supervisor::run() {
  // Signals arrive through a descriptor in the poll loop, never in the middle of a request.
  sigset_t mask;
  sigemptyset(&mask);
  for (int s : {SIGINT, SIGTERM, SIGHUP}) sigaddset(&mask, s);
  ::sigprocmask(SIG_BLOCK, &mask, nullptr);
  ::signal(SIGPIPE, SIG_IGN);
  signal_fd_ = UniqueFd(::signalfd(-1, &mask, SFD_CLOEXEC | SFD_NONBLOCK));
  if (!signal_fd_) fail_os(ExitCode::failure, "signalfd", errno);

  try {
    boot();
    if (!stop_requested_) serve();
  } catch (...) {
    shutdown_machine();
    throw;
  }
  shutdown_machine();
  options_.say(fmt::format("guest stopped ({})", stop_reason_));
  return exit_code_;
}

void Supervisor::boot() {
  const auto& m = options_.machine;
  options_.say(fmt::format("starting guest \"{}\": {} vCPUs, {} MiB, accelerator {}", m.name, m.vcpus,
                           m.memory_bytes >> 20, to_string(m.accelerator)));
  machine_ = factory_(m, Deadline::in(kLaunchTimeout));
  agent_ = std::make_unique<AgentChannel>(machine_->connect_agent_channel(Deadline::in(std::chrono::seconds(5))));
  interceptor_ = std::make_unique<CrashInterceptor>(*machine_);
  if (options_.recovery.enabled) {
    MachineConfig vm = m;  // the guest's own kernel, QEMU and accelerator
    vm.name = m.name + "-repair";
    vm.initrd.clear();
    vm.append = "console=ttyS0 quiet panic=-1 rdinit=/init";
    vm.memory_bytes = options_.repair.vm_memory;
    vm.vcpus = 1;
    repair_ = std::make_unique<RepairBroker>(options_.repair, factory_, vm, dir_.file("repair"), options_.say,
                                             [this](const std::string& name, json fields) { event(name, std::move(fields)); });
  }
  control_listener_ = listen_unix(dir_.file("control.sock"));
  set_nonblocking(control_listener_.get(), true);
  started_ = Clock::now();
  machine_->resume();
  guest_state_ = "booting";

  auto deadline = Deadline::in(options_.hello_timeout);
  while (!agent_->hello()) {
    poll_once(/*agent_errors_are_fatal=*/true);
    if (stop_requested_) return;
    if (guest_state_ == "shut off")
      fail(ExitCode::qemu, "the guest stopped while booting; last console lines:\n{}", last_console_lines(10));
    if (guest_state_ == "crashed")
      fail(ExitCode::guest_crashed, "the guest kernel crashed while booting; last console lines:\n{}",
           last_console_lines(15));
    if (agent_->closed()) fail(ExitCode::agent, "the guest agent's channel closed during boot");
    if (!agent_->hello() && deadline.expired())
      fail(ExitCode::agent, "the guest agent did not say hello within {} s; last console lines:\n{}",
           options_.hello_timeout.count() / 1000, last_console_lines(10));
  }
  boot_time_ = std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - started_);
  guest_state_ = "running";
  const auto& hello = *agent_->hello();
  std::string summary = fmt::format("guest \"{}\" is up: agent hello after {:.2f} s — kernel {}, boot id {}, agent {}",
                                    m.name, boot_time_->count() / 1000.0, hello.kernel_release, hello.boot_id,
                                    hello.agent_version);
  options_.say(summary);
  event("started", {{"boot_id", hello.boot_id}, {"kernel_release", hello.kernel_release},
                    {"boot_seconds", boot_time_->count() / 1000.0}, {"recovery", options_.recovery.enabled}});
  profile_ = std::make_unique<ProfileCollector>(*agent_, dir_.file("profile"), options_.say);
  profile_->collect(agent_->modules_generation());
  ready_summary_ = summary;
  if (!options_.recovery.enabled) report_ready("recovery is off");
}

void Supervisor::serve() {
  while (!stop_requested_) {
    poll_once(/*agent_errors_are_fatal=*/false);
    // A module was loaded or unloaded: the profile must describe the kernel as it is now.
    if (guest_state_ == "running" && !profile_->busy() && agent_->modules_generation() != profile_->generation() &&
        !agent_->closed())
      profile_->collect(agent_->modules_generation());
    if (guest_state_ == "rebooting" && agent_->hello() && agent_->hello()->boot_id != old_boot_id_) after_reboot_hello();
    if (guest_state_ == "running" && options_.recovery.enabled) arm_interception();
    if (guest_state_ == "running") prepare_bundle_arena();
    // Never keep `run --detach` waiting on a profile that cannot come.
    if (!ready_summary_.empty() && (agent_->closed() || Clock::now() - started_ - *boot_time_ > kArmTimeout))
      report_ready(std::string("crash interception NOT armed (no guest profile") +
                   (agent_->closed() ? ": the agent's channel closed)" : " in time)"));
    if (guest_state_ == "recovering") verify_recovery();
    if (guest_state_ == "running") check_hang();
    if (guest_state_ == "hung" && agent_->last_heard() && Clock::now() - *agent_->last_heard() < std::chrono::seconds(2)) {
      guest_state_ = "running";  // recovery off: the agent answers again
      event("hang-over", {});
    }
    if (guest_state_ == "shut off") {
      stop_requested_ = true;
      stop_reason_ = "the guest powered off";
    }
  }
}

void Supervisor::poll_once(bool agent_errors_are_fatal) {
  std::vector<pollfd> fds{{signal_fd_.get(), POLLIN, 0}, {control_listener_.get(), POLLIN, 0}};
  if (!agent_->closed()) fds.push_back({agent_->fd(), POLLIN, 0});
  for (int fd : machine_->event_fds()) fds.push_back({fd, POLLIN, 0});
  for (auto& [fd, c] : clients_) fds.push_back({fd, POLLIN, 0});
  ::poll(fds.data(), fds.size(), static_cast<int>(kLoopTick.count()));

  pump_console();
  handle_signals();
  handle_machine_events();
  collect_bundles();
  if (repair_) repair_->poll();
  if (pause_after_crash_ && Clock::now() >= *pause_after_crash_) {
    pause_after_crash_.reset();
    try {
      machine_->pause();
      options_.say("the crashed guest is frozen; last console lines:\n" + last_console_lines(15));
      {
        // The dump of a crash caught only by pvpanic: panic() has run, so panic_cpu says which CPU.
        auto record = interceptor_->record(crashes_, -1, "pvpanic", "");
        int cpu = -1;
        json analysis;
        try {
          Kernel& kernel = guest_kernel();
          cpu = kernel.memory().read_value<std::int32_t>(kernel.symbol("panic_cpu"));
          if (cpu < 0 || cpu >= static_cast<int>(record.registers.size())) cpu = -1;
          record.vcpu = cpu;
          if (cpu >= 0 && repair_) {
            RepairAnswer answer = ask_repair_engine(record);
            if (answer.ok) analysis = answer.analysis;
          } else if (cpu >= 0) {
            // Recovery off: no repair engine runs; the report's analysis is read here, with the
            // same bounded readers as the bundle's report (nothing is written to the guest).
            analysis = repair::analyze_crash(kernel, record).to_json();
          }
        } catch (const std::exception&) {
          // No analysis: the bundle still holds the memory and every vCPU's registers.
        }
        bool reboot = reboot_after_pause_.has_value();
        hold_crash_bundle(record, capture_for_bundle(record.registers, cpu), analysis, json(),
                          reboot ? "reboot" : "none",
                          reboot ? "caught by pvpanic only: past the point where it can be resumed"
                                 : "recovery is off: the guest is left frozen");
        if (!reboot) finish_crash_bundle("frozen");
      }
      if (reboot_after_pause_) {
        auto crash = *reboot_after_pause_;
        reboot_after_pause_.reset();
        reboot_guest("the crash was not caught at its first instruction (pvpanic only): it cannot be resumed", crash);
      }
    } catch (const Error& e) {
      options_.say(std::string("cannot pause the crashed guest: ") + e.what());
    }
  }
  try {
    agent_->on_readable();
  } catch (const Error& e) {
    if (agent_errors_are_fatal) throw;
    options_.say(e.what());  // the guest keeps running; status shows the agent as gone
  }
  accept_control();
  std::vector<int> ready;
  for (const auto& p : fds)
    if (p.revents && clients_.count(p.fd)) ready.push_back(p.fd);
  for (int fd : ready) handle_control(fd);
}

void Supervisor::handle_signals() {
  signalfd_siginfo info{};
  while (::read(signal_fd_.get(), &info, sizeof info) == static_cast<ssize_t>(sizeof info)) {
    stop_requested_ = true;
    stop_reason_ = fmt::format("signal {}", ::strsignal(static_cast<int>(info.ssi_signo)));
    exit_code_ = 128 + static_cast<int>(info.ssi_signo);
  }
}

void Supervisor::handle_machine_events() {
  for (const auto& e : machine_->drain_events()) {
    switch (e.kind) {
      case MachineEvent::Kind::guest_panicked: {
        if (guest_state_ == "rebooting") break;
        guest_state_ = "crashed";
        pause_after_crash_ = Clock::now() + kCrashConsoleGrace;
        std::uint64_t id = ++crashes_;
        event("crash", {{"crash", id}, {"caught_at", utc_now()}, {"caught_by", "pvpanic"},
                        {"summary", "a kernel panic reported by the guest (pvpanic): not caught at its first instruction"}});
        last_crash_ = {{"crash", id}, {"time", utc_now()}, {"summary", "a kernel panic reported by the guest (pvpanic)"},
                       {"decision", options_.recovery.enabled ? "reboot" : "freeze"},
                       {"reason", "not caught at its first instruction"}};
        if (options_.recovery.enabled) {
          reboot_after_pause_ = id;
          options_.say("the guest kernel crashed (pvpanic) past the point where it can be resumed; it will be rebooted");
        } else {
          options_.say("the guest kernel crashed (pvpanic); recovery is off; the VM will be frozen with its state kept.");
        }
        break;
      }
      case MachineEvent::Kind::breakpoint:
        on_breakpoint(e.vcpu);
        break;
      case MachineEvent::Kind::shutdown:
        guest_state_ = "shut off";
        break;
      case MachineEvent::Kind::reset:
        if (guest_state_ != "rebooting") {
          // A reboot inside the guest, or a triple fault: either way a new boot begins, whose
          // kernel addresses (KASLR) the armed breakpoints do not match.
          options_.say("the guest reset itself");
          event("guest-reset", {{"detail", e.detail}});
          try {
            machine_->pause();
            interceptor_->disarm();
            machine_->resume();
          } catch (const Error& err) {
            options_.say(std::string("cannot disarm after the reset: ") + err.what());
          }
          old_boot_id_ = agent_->hello() ? agent_->hello()->boot_id : "";
          armed_profile_ = 0;
          quarantine_.clear();
          guest_state_ = "rebooting";
        }
        break;
      default:
        break;
    }
  }
}

void Supervisor::accept_control() {
  for (;;) {
    int fd = ::accept4(control_listener_.get(), nullptr, nullptr, SOCK_CLOEXEC | SOCK_NONBLOCK);
    if (fd < 0) return;
    UniqueFd client(fd);
    if (clients_.size() >= kMaxControlClients) continue;  // closed: too many at once
    clients_.emplace(fd, std::make_unique<ControlConnection>(std::move(client)));
  }
}

void Supervisor::handle_control(int fd) {
  auto it = clients_.find(fd);
  if (it == clients_.end()) return;
  std::optional<json> request;
  try {
    request = it->second->on_readable();
  } catch (const Error& e) {
    if (e.code() == ExitCode::usage) it->second->reply_error(e.exit_code(), e.what());
    clients_.erase(it);
    return;
  }
  if (!request) return;
  try {
    answer(fd, *request);
  } catch (const nlohmann::json::exception& e) {
    // A field of the wrong type: the client's mistake, not a reason for the supervisor to die.
    if (auto again = clients_.find(fd); again != clients_.end()) {
      again->second->reply_error(static_cast<int>(ExitCode::usage), std::string("malformed request: ") + e.what());
      clients_.erase(again);
    }
  }
}

void Supervisor::answer(int fd, const json& request) {
  auto& client = *clients_.at(fd);
  std::string command = request["command"].get<std::string>();
  auto done = [this, fd] { clients_.erase(fd); };
  if (command == "status") {
    client.reply(status());
    return done();
  }
  if (command == "stop") {
    stop_requested_ = true;
    stop_reason_ = "stop requested";
    if (request.value("force", false)) options_.stop_grace = std::chrono::milliseconds(0);
    client.reply({{"stopping", true}});
    return done();
  }
  if (command == "exec") return answer_exec(fd, request);
  if (command == "unquarantine") return answer_unquarantine(fd, request);
  if (command == "events") {
    client.reply({{"events", json(events_.recent())}});
    return done();
  }
  if (command == "inject") return answer_inject(fd, request);
  if (command == "bundle") return answer_bundle(fd);
  if (command == "introspect") {
    try {
      client.reply(introspect(request.value("part", "")));
    } catch (const Error& e) {
      client.reply_error(e.exit_code(), e.what());
    } catch (const MemoryFault& e) {
      client.reply_error(static_cast<int>(ExitCode::failure), e.what());
    }
    return done();
  }
  if (command == "dump") {
    std::string path = request.value("path", "");
    if (path.empty() || path[0] != '/') {
      client.reply_error(static_cast<int>(ExitCode::usage), "dump needs an absolute file path");
      return done();
    }
    try {
      auto start = Clock::now();
      machine_->write_native_dump(path);
      client.reply({{"path", path}, {"seconds", std::chrono::duration<double>(Clock::now() - start).count()}});
    } catch (const Error& e) {
      client.reply_error(e.exit_code(), e.what());
    }
    return done();
  }
  client.reply_error(static_cast<int>(ExitCode::usage), "unknown command \"" + command + "\"");
  done();
}

void Supervisor::answer_exec(int fd, const json& request) {
  auto& client = *clients_.at(fd);
  const json& argv = request.value("argv", json::array());
  std::vector<std::string> args;
  if (argv.is_array())
    for (const auto& a : argv)
      if (a.is_string()) args.push_back(a.get<std::string>());
  if (args.empty() || args.size() != argv.size()) {
    client.reply_error(static_cast<int>(ExitCode::usage), "exec needs a command");
    clients_.erase(fd);
    return;
  }
  if (!agent_->hello() || agent_->closed()) {
    client.reply_error(static_cast<int>(ExitCode::agent), "the guest agent is not connected");
    clients_.erase(fd);
    return;
  }
  auto timeout = request.value("timeout_ms", 60'000u);
  try {
    agent_->exec(args, timeout, [this, fd](const agent::ExecResult* result, const std::string& error) {
      auto it = clients_.find(fd);
      if (it == clients_.end()) return;
      if (!result) {
        it->second->reply_error(static_cast<int>(ExitCode::agent), error);
      } else {
        json r = {{"stdout", agent::base64_encode(result->stdout_data)},
                  {"stderr", agent::base64_encode(result->stderr_data)},
                  {"truncated", result->truncated},
                  {"timed_out", result->timed_out}};
        r["exit_code"] = result->exit_code ? json(*result->exit_code) : json(nullptr);
        r["signal"] = result->signal ? json(*result->signal) : json(nullptr);
        if (!result->error.empty()) r["error"] = result->error;
        it->second->reply(r);
      }
      clients_.erase(it);
    });
  } catch (const Error& e) {
    client.reply_error(e.exit_code(), e.what());
    clients_.erase(fd);
  }
}

// inject CLASS: check the guest has the fault driver, then start the victim process that
// asks it to fault (guest-agent/image/immortal-victim) and answer with its pid.
void Supervisor::answer_inject(int fd, const json& request) {
  auto finish = [this, fd](int code, const std::string& message, const json& answer) {
    auto it = clients_.find(fd);
    if (it == clients_.end()) return;
    if (code) it->second->reply_error(code, message);
    else it->second->reply(answer);
    clients_.erase(it);
  };
  std::string name = request.value("class", "");
  // "lkdtm:TYPE" asks the guest's LKDTM instead of our driver; the type is checked for its shape
  // here (it goes into a guest command line) and for its existence by the guest's LKDTM below.
  std::optional<std::string> lkdtm = lkdtm_type(name);
  const FaultClass* fault = find_fault_class(name);
  if (!fault && !lkdtm)
    return finish(static_cast<int>(ExitCode::usage),
                  (is_lkdtm_class(name) ? "bad LKDTM type in \"" : "unknown fault class \"") + name +
                  "\" (immortal inject --list shows them)", {});
  if (guest_state_ != "running" || !agent_->hello() || agent_->closed())
    return finish(static_cast<int>(ExitCode::agent), "the guest is not running with its agent connected (state: " +
                  guest_state_ + ")", {});
  std::string cls = fault ? std::string(fault->name) : name;
  // Reading LKDTM's trigger lists its types, one a line: grep says 0 (known), 1 (unknown), 2 (no file).
  std::vector<std::string> check = lkdtm ? std::vector<std::string>{"grep", "-qxF", *lkdtm, kLkdtmTrigger}
                                         : std::vector<std::string>{"test", "-c", "/dev/immortal-fault"};
  try {
    agent_->exec(check, 10'000,
                 [this, finish, cls, lkdtm](const agent::ExecResult* result, const std::string& error) {
      if (!result) return finish(static_cast<int>(ExitCode::agent), error, {});
      if (lkdtm && result->exit_code == 1)
        return finish(static_cast<int>(ExitCode::usage),
                      "the guest's LKDTM has no crash type \"" + *lkdtm + "\" (its types: immortal exec " +
                      options_.machine.name + " -- cat " + kLkdtmTrigger + ")", {});
      if (lkdtm && result->exit_code != 0)
        return finish(static_cast<int>(ExitCode::failure),
                      std::string("the guest has no LKDTM: ") + kLkdtmTrigger +
                      " is missing (is the lkdtm module loaded and debugfs mounted?)", {});
      if (result->exit_code != 0)
        return finish(static_cast<int>(ExitCode::failure),
                      "the guest has no fault-injection driver: /dev/immortal-fault is missing "
                      "(is the immortal_fault module loaded?)", {});
      std::vector<std::string> argv{"/sbin/immortal-victim", cls};
      agent_->spawn(argv, [this, finish, cls, argv](int pid, const std::string& spawn_error) {
        if (pid <= 0) return finish(static_cast<int>(ExitCode::failure), "cannot start the victim: " + spawn_error, {});
        options_.say(fmt::format("injected {}: victim pid {} ({} {})", cls, pid, argv[0], argv[1]));
        finish(0, "", {{"class", cls}, {"pid", pid}, {"command", argv}});
      });
    });
  } catch (const Error& e) {
    finish(e.exit_code(), e.what(), {});
  }
}

// Reads the guest kernel's own structures from its RAM, through the healthy-guest profile: the
// host's view, independent of the (possibly broken) agent. The guest is paused while we read,
// so lists are not changing under us (a few milliseconds).
json Supervisor::introspect(const std::string& part) {
  if (part != "tasks" && part != "modules" && part != "dmesg") fail(ExitCode::usage, "unknown part \"{}\"", part);
  Kernel& kernel = guest_kernel();
  return while_paused([&] {
    return part == "tasks" ? tasks_json(kernel) : part == "modules" ? modules_json(kernel) : kernel_log_json(kernel);
  });
}

json Supervisor::status() const {
  const auto& m = options_.machine;
  json s = {{"name", m.name},
            {"state", guest_state_},
            {"supervisor_pid", ::getpid()},
            {"qemu_pid", machine_ ? machine_->process_id() : 0},
            {"accelerator", to_string(m.accelerator)},
            {"accelerator_reason", options_.accelerator.reason},
            {"recovery", options_.recovery.enabled ? "on" : "off"},
            {"vcpus", m.vcpus},
            {"memory_bytes", m.memory_bytes},
            {"kernel", m.kernel},
            {"initrd", m.initrd},
            {"runtime_dir", dir_.path()},
            {"console_log", m.console_log},
            {"uptime_s", seconds_since(started_)}};
  if (boot_time_) s["boot_time_ms"] = boot_time_->count();
  // A crashed guest's agent cannot answer, even though its channel is still open.
  json agent = {{"connected", guest_state_ == "running" && agent_ && agent_->hello() && !agent_->closed()},
                {"heartbeats", agent_ ? agent_->heartbeats() : 0}};
  if (agent_ && agent_->last_heard()) agent["last_heard_s"] = seconds_since(*agent_->last_heard());
  if (agent_ && agent_->hello()) {
    const auto& h = *agent_->hello();
    s["kernel_release"] = h.kernel_release;
    s["boot_id"] = h.boot_id;
    agent["version"] = h.agent_version;
  }
  s["agent"] = agent;
  if (profile_) s["profile"] = profile_->status();
  json kinds = json::array();
  for (const auto& k : RecoveryPolicy::recoverable_kinds())
    if (!options_.recovery.disabled_kinds.count(k)) kinds.push_back(k);
  s["recovery_state"] = {{"armed", interceptor_ && interceptor_->armed()},
                         {"interception", interceptor_ ? json(interceptor_->points()) : json::array()},
                         {"kinds", kinds},
                         {"limit", fmt::format("{}/{}s", options_.recovery.max_recoveries, options_.recovery.window.count())},
                         {"crashes", crashes_},
                         {"recovered", recoveries_},
                         {"reboots", reboots_},
                         {"quarantined", quarantine_.to_json()},
                         {"pinned", [&] {
                            json p = json::array();
                            for (const auto& pin : quarantine_.pins()) p.push_back(pin.module);
                            return p;
                          }()},
                         {"quarantine_mode", options_.recovery.quarantine_driver ? "driver" : "function"},
                         {"verify_window_s", options_.recovery.verify_window.count() / 1000},
                         {"event_log", dir_.file("events.jsonl")}};
  if (!last_crash_.is_null()) s["last_crash"] = last_crash_;
  if (verification_) {
    json v = verification_->watch ? verification_->watch->progress() : json::object();
    v["crash"] = verification_->crash;
    v["agent_proved"] = verification_->agent_ms.has_value();
    s["verification"] = v;
  }
  if (repair_) s["repair"] = repair_->status();
  s["bundles"] = {{"dir", options_.bundles.dir}, {"written", bundles_->written()}, {"writing", bundles_->writing()},
                  {"last", bundles_->last_path()}};
  return s;
}

void Supervisor::shutdown_machine() {
  if (!machine_) return;
  for (auto& [fd, c] : clients_) c->reply_error(static_cast<int>(ExitCode::failure), "the instance is stopping");
  clients_.clear();
  if (agent_) agent_->abandon("the instance is stopping");
  // Ask the guest to power itself off (it flushes what it has), then make sure the VM is gone.
  if (guest_state_ == "running" && agent_ && !agent_->closed() && options_.stop_grace.count() > 0) {
    try {
      agent_->poweroff();
      auto deadline = Deadline::in(options_.stop_grace);
      while (guest_state_ != "shut off" && !deadline.expired()) {
        std::vector<pollfd> fds;
        for (int fd : machine_->event_fds()) fds.push_back({fd, POLLIN, 0});
        ::poll(fds.data(), fds.size(), 50);
        handle_machine_events();
      }
    } catch (const Error&) {
      // Fall through to terminate.
    }
  }
  pump_console();
  machine_->terminate(std::chrono::seconds(2));
  machine_.reset();
  guest_state_ = "shut off";
  if (pending_bundle_) finish_crash_bundle("unknown: the instance stopped before the outcome was known");
  if (bundles_->writing()) {
    options_.say(fmt::format("waiting for {} bundle(s) to be written", bundles_->writing()));
    bundles_->drain(std::chrono::minutes(5));
  }
  collect_bundles();
}

void Supervisor::pump_console() {
  if (!options_.echo_console) return;
  std::ifstream in(options_.machine.console_log, std::ios::binary);
  if (!in) return;
  in.seekg(static_cast<std::streamoff>(console_offset_));
  char buf[8192];
  while (in.read(buf, sizeof buf) || in.gcount() > 0) {
    std::cout.write(buf, in.gcount());
    console_offset_ += static_cast<std::uint64_t>(in.gcount());
  }
  std::cout.flush();
}

std::string Supervisor::last_console_lines(std::size_t n) const {
  std::string out;
  for (const auto& line : last_lines(options_.machine.console_log, n)) out += "  | " + line + "\n";
  return out.empty() ? "  (the console is empty)\n" : out;
}

// ---- Recovery (docs/recovery.md) -------------------------------------------------------

template <typename F>
auto Supervisor::while_paused(F&& f) -> decltype(f()) {
  bool was_running = machine_->state() == RunState::running;
  if (was_running) machine_->pause();
  decltype(f()) result;
  try {
    result = f();
  } catch (...) {
    if (was_running) machine_->resume();
    throw;
  }
  if (was_running) machine_->resume();
  return result;
}

void Supervisor::report_ready(const std::string& how) {
  if (ready_summary_.empty()) return;
  if (options_.on_ready) options_.on_ready(ready_summary_ + "; " + how);
  ready_summary_.clear();
}

void Supervisor::event(const std::string& name, json fields) {
  bool for_pending = pending_bundle_ && fields.is_object() && fields.value("crash", std::uint64_t{0}) == pending_bundle_->crash;
  if (std::string problem = events_.append(name, std::move(fields)); !problem.empty()) options_.say(problem);
  if (for_pending && !events_.recent().empty()) pending_bundle_->events.push_back(events_.recent().back());
}

Kernel& Supervisor::guest_kernel() {
  std::uint64_t number = profile_ ? profile_->number() : 0;
  if (!number) fail(ExitCode::failure, "no guest profile yet (the agent has not reported one)");
  if (!kernel_ || kernel_profile_ != number) {
    auto loaded = std::make_shared<const GuestProfile>(GuestProfile::load(dir_.file("profile")));
    kernel_ = Kernel::open(machine_->memory(), *loaded, std::nullopt);
    guest_profile_ = std::move(loaded);
    kernel_profile_ = number;
  }
  kernel_->memory().forget_translations();  // the guest ran since the last read
  return *kernel_;
}

void Supervisor::arm_interception() {
  if (!profile_ || profile_->busy()) return;
  json profile = profile_->status();
  if (!profile.contains("taken_at")) {
    if (profile.contains("error"))
      report_ready("crash interception NOT armed (no guest profile: " + profile["error"].get<std::string>() + ")");
    return;
  }
  std::string taken = profile["taken_at"].get<std::string>();
  if (profile_->number() == armed_profile_) return;
  armed_profile_ = profile_->number();  // one attempt per profile, whatever happens
  try {
    Kernel& kernel = guest_kernel();
    auto notes = while_paused([&] { return interceptor_->arm(kernel); });
    event("armed", {{"interception", interceptor_->points()}, {"notes", notes}});
    for (const auto& n : notes) options_.say(n);
    rebuild_repair_image(taken);
    report_ready(fmt::format("crash interception armed at {}", fmt::join(interceptor_->points(), ", ")));
  } catch (const std::exception& e) {
    event("arm-failed", {{"error", e.what()}});
    options_.say(std::string("cannot arm crash interception (crashes will reboot the guest): ") + e.what());
    report_ready(std::string("crash interception NOT armed: ") + e.what());
  }
}

void Supervisor::rebuild_repair_image(const std::string& taken_at) {
  if (!repair_) return;
  try {
    auto ram = machine_->ram_file();
    if (!ram) fail(ExitCode::failure, "this backend has no shared RAM file for a repair VM or process to read");
    // The guest is healthy and running: its code is read as it is now (runtime patch sites
    // that change later are recognised at the comparison).
    repair::HealthyImage healthy = repair::capture_healthy_image(guest_kernel(), taken_at);
    // Functions quarantined now are healthy with their original bytes: an unquarantine later
    // must not look like corruption (nor a restore put the patch back).
    for (const auto& q : quarantine_.entries())
      for (auto& r : healthy.regions)
        if (r.contains(q.address, q.original.size()))
          std::copy(q.original.begin(), q.original.end(), r.bytes.begin() + static_cast<std::ptrdiff_t>(q.address - r.address));
    repair_->rebuild(dir_.file("profile"), healthy, *ram);
  } catch (const std::exception& e) {
    event("repair-failed", {{"mode", options_.repair.mode}, {"error", std::string("cannot build the repair image: ") + e.what()}});
    options_.say(std::string("cannot build the repair image (crashes will be analysed by the fallback, if any): ") + e.what());
  }
}

RepairAnswer Supervisor::ask_repair_engine(const repair::CrashRecord& record) {
  RepairAnswer answer;
  if (!repair_) {
    answer.error = "no repair engine (recovery is off)";
    return answer;
  }
  repair::RepairRequest request{record, {}, options_.recovery.quarantine_driver};
  for (const auto& q : quarantine_.entries()) request.known_patches.push_back({q.address, q.patch});
  answer = repair_->analyse(request);
  for (const auto& f : answer.fallbacks) options_.say("repair engine fallback: " + f);
  if (answer.cross_check.is_object() && answer.cross_check.value("identical", json()) == json(false))
    event("repair-mismatch", {{"crash", record.id}, {"mode", answer.mode}, {"other", answer.cross_check}});
  return answer;
}

void Supervisor::on_breakpoint(int vcpu) {
  std::optional<std::string> point;
  try {
    if (vcpu >= 0) point = interceptor_->point_at(machine_->read_registers(vcpu).rip);
  } catch (const Error&) {
  }
  if (!point) {
    // Not ours (or a vCPU we cannot read): never leave the guest stopped for it.
    options_.say(fmt::format("an unexpected debug stop on vCPU {}: resuming", vcpu));
    machine_->resume();
    return;
  }
  if (*point == "crash_kexec") {
    // An oops about to hand the guest to its kdump kernel (crash_kexec() runs before panic()
    // when a crash kernel is loaded, and on every oops with panic_on_oops). Return from it as if
    // no crash kernel were loaded: oops_end() goes on to panic(), where the crash is caught as
    // any other. If that crash cannot be recovered, the guest's kdump still gets it.
    try {
      interceptor_->return_from_call(vcpu, guest_kernel());
      machine_->resume();
    } catch (const std::exception& e) {
      options_.say(std::string("cannot step over crash_kexec: ") + e.what());
      on_crash(interceptor_->record(++crashes_, vcpu, "breakpoint", *point));
    }
    return;
  }
  on_crash(interceptor_->record(++crashes_, vcpu, "breakpoint", *point));
}

void Supervisor::on_crash(repair::CrashRecord record) {
  auto t0 = Clock::now();
  if (verification_) cut_verification_short(record.id);
  guest_state_ = "crashed";
  json analysis_json, plan_json;
  repair::RepairPlan plan;
  std::optional<std::string> kernel_error;
  std::string kind, summary;
  RepairAnswer answer = ask_repair_engine(record);
  try {
    if (!answer.ok) fail(ExitCode::failure, "{}", answer.error);
    analysis_json = answer.analysis;
    plan = repair::plan_from_json(answer.plan);
    kind = analysis_json.value("kind", "");
    summary = analysis_json.value("summary", "");
    PlanContext context{analysis_json.value("cpu", -1), analysis_json.value("module", ""),
                        repair::parse_hex(analysis_json.value("percpu_base", json("0x0")), "percpu_base"), std::nullopt};
    if (plan.resume && options_.recovery.disabled_kinds.count(kind)) {
      plan.resume = false;
      plan.reason = "recovery of " + kind + " crashes is disabled by policy";
    }
    if (plan.resume && !budget_.available(Clock::now())) {
      plan.resume = false;
      plan.reason = fmt::format("the recovery limit is reached ({} in {} s): a driver that keeps crashing is "
                                "better served by a reboot", options_.recovery.max_recoveries,
                                options_.recovery.window.count());
    }
    if (plan.resume) {
      try {
        if (context.cpu != record.vcpu) fail(ExitCode::failure, "the analysis is of CPU {}, the crash on {}", context.cpu, record.vcpu);
        // The per-CPU area a plan may write into is the one this vCPU's GS points at (kernel
        // mode: GS base; user mode: the swapped-out kernel GS base), not what the agent says.
        const X86Registers& regs = record.registers.at(static_cast<std::size_t>(record.vcpu));
        if (context.percpu_base != regs.gs_base && context.percpu_base != regs.kernel_gs_base)
          fail(ExitCode::failure, "the analysis puts CPU {}'s per-CPU area at {:#x}, its GS base says otherwise",
               record.vcpu, context.percpu_base);
        // The module's bounds as the healthy copy has them, unless it was loaded (or reloaded
        // elsewhere) since: then as the guest's module list says (a bounded, cycle-safe walk).
        std::optional<repair::ModuleLayout> live;
        for (const auto& mod : read_modules(guest_kernel()).modules)
          if (mod.name == context.module) live = repair::ModuleLayout{mod.name, mod.base, mod.size, mod.text_size};
        const repair::HealthyImage* healthy = repair_ ? repair_->healthy() : nullptr;
        const repair::ModuleLayout* known = healthy ? healthy->module(context.module) : nullptr;
        context.module_layout = known && (!live || live->base == known->base) ? std::optional(*known) : live;
        validate_plan(plan, context, guest_kernel(), repair_ ? repair_->healthy() : nullptr);
      } catch (const Error& e) {
        plan.resume = false;
        plan.reason = std::string("the plan failed validation: ") + e.what();
      }
    }
  } catch (const std::exception& e) {
    kernel_error = e.what();
    plan = repair::RepairPlan{};
    plan.vcpu = record.vcpu;
    plan.reason = std::string("the crashed kernel cannot be analysed: ") + e.what();
  }
  plan_json = plan.to_json();
  double analysis_ms = ms_since(t0);
  // The dump's copy of memory comes before the repair changes anything.
  hold_crash_bundle(record, capture_for_bundle(record.registers, record.vcpu), analysis_json, plan_json,
                    plan.resume ? "resume" : "reboot", plan.reason);
  if (kernel_error || summary.empty()) summary = plan.reason;
  last_crash_ = {{"crash", record.id}, {"time", record.time}, {"summary", summary}, {"decision", plan.resume ? "resume" : "reboot"},
                 {"reason", plan.reason}};
  event("crash", {{"crash", record.id}, {"caught_at", record.time}, {"caught_by", record.caught_by}, {"at", record.intercepted_at},
                  {"vcpu", record.vcpu}, {"summary", summary}, {"analysis", analysis_json}, {"repair", answer.to_json()}});
  event("plan", {{"crash", record.id}, {"plan", plan_json}});
  options_.say(fmt::format("crash {} caught at {} on vCPU {}: {}", record.id, record.intercepted_at, record.vcpu, summary));
  if (!plan.resume) {
    save_crash(record, analysis_json, plan_json);
    if (record.intercepted_at == "panic" && guest_has_kdump()) {
      hand_to_guest_kdump(plan.reason, record.id);
      return;
    }
    reboot_guest(plan.reason, record.id);
    return;
  }
  auto t_apply = Clock::now();
  try {
    interceptor_->apply(plan, *kernel_);
    machine_->resume();
  } catch (const std::exception& e) {
    save_crash(record, analysis_json, plan_json);
    reboot_guest(std::string("applying the repair failed: ") + e.what(), record.id);
    return;
  }
  double apply_ms = ms_since(t_apply), total_ms = ms_since(t0);
  budget_.spend(Clock::now());
  quarantine_.add(plan, record.id, record.time);
  guest_state_ = "recovering";
  verification_ = Verification{record.id, Clock::now(), Deadline::in(options_.recovery.verify_timeout).at(),
                               agent_->heartbeats(), false, std::nullopt, "", std::nullopt, nullptr, Clock::now()};
  if (options_.recovery.verify_window.count() > 0) {
    // What the repair killed, for the check that it is gone and nobody waits on its locks.
    std::uint64_t killed = 0;
    int killed_pid = -1;
    for (const auto& a : plan.actions)
      if (a.kind == "kill-task") {
        killed = repair::parse_hex(analysis_json.value("task", json::object()).value("address", json("0x0")), "task");
        killed_pid = analysis_json.value("task", json::object()).value("pid", -1);
      } else if (a.kind == "kill-sleeping-task" && !killed) {
        killed = repair::parse_hex(a.detail.value("task", json("0x0")), "task");
        killed_pid = a.detail.value("pid", -1);
      }
    try {
      verification_->watch = std::make_unique<RecoveryVerifier>(guest_kernel(), killed, killed_pid, options_.recovery.verify_window);
    } catch (const std::exception& e) {
      options_.say(std::string("the recovered guest cannot be watched from its memory: ") + e.what());
    }
  }
  json timings = {{"analysis_ms", analysis_ms}, {"apply_ms", apply_ms}, {"intercept_to_resume_ms", total_ms},
                  {"repair_mode", answer.mode}, {"engine_ms", answer.engine_ms}, {"repair_round_trip_ms", answer.round_trip_ms}};
  if (pending_bundle_) {
    timings["snapshot_pause_ms"] = pending_bundle_->capture.pause_ms;
    pending_bundle_->timings.update(timings);
  }
  event("resumed", {{"crash", record.id}, {"actions", plan.reason}, {"analysis_ms", analysis_ms}, {"apply_ms", apply_ms},
                    {"repair_mode", answer.mode}, {"engine_ms", answer.engine_ms}, {"lock_search_ms", answer.lock_search_ms},
                    {"snapshot_ms", timings.value("snapshot_pause_ms", 0.0)}, {"intercept_to_resume_ms", total_ms}});
  options_.say(fmt::format("crash {}: repaired ({}) and resumed {:.1f} ms after interception; verifying", record.id,
                           plan.reason, total_ms));
  save_crash(record, analysis_json, plan_json);
}

void Supervisor::verify_recovery() {
  auto& v = *verification_;
  auto since_resume = [&] { return ms_since(v.resumed_at); };
  if (!v.probe_sent && agent_->heartbeats() > v.heartbeats && !agent_->closed()) {
    // The agent's loop runs again; now a real round trip through a new process.
    v.probe_sent = true;
    try {
      agent_->exec({"true"}, 10'000, [this, id = v.crash](const agent::ExecResult* result, const std::string& error) {
        if (!verification_ || verification_->crash != id) return;
        verification_->probe_ok = result && result->exit_code == 0;
        if (!result) verification_->probe_error = error;
      });
    } catch (const Error& e) {
      v.probe_ok = false;
      v.probe_error = e.what();
    }
  }
  if (v.probe_ok && !*v.probe_ok)
    return fail_recovery("agent", "the health probe failed: " + (v.probe_error.empty() ? "exit status not 0" : v.probe_error));
  if (v.probe_ok && !v.agent_ms) v.agent_ms = since_resume();
  if (!v.agent_ms && Clock::now() >= v.deadline)
    return fail_recovery("agent", fmt::format("no heartbeat and health probe within {} ms after resuming",
                                              options_.recovery.verify_timeout.count()));
  if (v.watch && Clock::now() >= v.next_look) {
    v.next_look = Clock::now() + std::chrono::seconds(1);
    try {
      if (auto failed = v.watch->look(guest_kernel())) return fail_recovery(failed->name, failed->detail);
    } catch (const std::exception& e) {
      // The profile's kernel view cannot be had: the agent's proof still stands on its own.
      options_.say(std::string("the recovered guest cannot be read: ") + e.what());
      v.watch.reset();
    }
  }
  if (!v.agent_ms || (v.watch && !v.watch->window_over())) return;
  json checks = json::array();
  checks.push_back({{"check", "agent"}, {"passed", true}, {"detail", fmt::format("heartbeat and a new process {:.0f} ms after the resume", *v.agent_ms)}});
  if (v.watch) {
    try {
      for (const auto& c : v.watch->conclude(guest_kernel())) {
        if (!c.passed) return fail_recovery(c.name, c.detail);
        checks.push_back({{"check", c.name}, {"passed", true}, {"detail", c.detail}});
      }
    } catch (const std::exception& e) {
      checks.push_back({{"check", "window"}, {"passed", true}, {"detail", std::string("not concluded: ") + e.what()}});
    }
  }
  double ms = since_resume();
  ++recoveries_;
  event("recovered", {{"crash", v.crash}, {"verify_ms", *v.agent_ms}, {"window_ms", ms}, {"checks", checks}});
  options_.say(fmt::format("crash {}: the guest is healthy again (heartbeat and a new process within {:.0f} ms; "
                           "watched for {:.1f} s)", v.crash, *v.agent_ms, ms / 1000));
  last_crash_["outcome"] = "recovered";
  guest_state_ = "running";
  std::uint64_t agent_ms = static_cast<std::uint64_t>(*v.agent_ms);
  verification_.reset();
  finish_crash_bundle("recovered", {{"verify_ms", agent_ms}, {"window_ms", ms}});
}

void Supervisor::fail_recovery(const std::string& check, const std::string& why) {
  auto id = verification_->crash;
  verification_.reset();
  event("recovery-failed", {{"crash", id}, {"check", check}, {"reason", why}});
  options_.say(fmt::format("crash {}: the recovered guest failed the {} check: {}", id, check, why));
  last_crash_["outcome"] = "recovery failed";
  last_crash_["failed_check"] = check;
  if (pending_bundle_) pending_bundle_->recovery["verification"] = check + ": " + why;
  reboot_guest("the recovery did not hold (" + check + "): " + why, id);
}

void Supervisor::cut_verification_short(std::uint64_t new_crash) {
  auto& v = *verification_;
  auto id = v.crash;
  bool proven = v.agent_ms.has_value();
  double ms = ms_since(v.resumed_at);
  verification_.reset();
  std::string note = fmt::format("crash {} came {:.1f} s into the watch window", new_crash, ms / 1000);
  if (proven) {
    ++recoveries_;
    event("recovered", {{"crash", id}, {"window_ms", ms}, {"note", note + ": the checks up to then passed"}});
    finish_crash_bundle("recovered (watch cut short by a new crash)");
  } else {
    event("recovery-failed", {{"crash", id}, {"check", "agent"}, {"reason", note + " before the agent answered"}});
    finish_crash_bundle("recovery failed: a new crash came first");
  }
}

void Supervisor::check_hang() {
  if (!agent_->last_heard() || agent_->closed()) return;
  if (Clock::now() - *agent_->last_heard() < options_.recovery.hang_timeout) return;
  std::uint64_t id = ++crashes_;
  std::string why = fmt::format("no heartbeat from the guest agent for {} s", options_.recovery.hang_timeout.count() / 1000);
  if (!options_.recovery.enabled) {
    event("hang", {{"crash", id}, {"reason", why}, {"action", "none (recovery is off)"}});
    options_.say("the guest seems hung: " + why + " (recovery is off: left alone)");
    guest_state_ = "hung";
    return;
  }
  try {
    machine_->pause();
    auto record = interceptor_->record(id, -1, "hang", "");
    json stacks = json::array();
    try {
      Kernel& kernel = guest_kernel();
      OrcUnwinder unwinder(kernel);
      for (const auto& r : record.registers) {
        json frames = json::array();
        for (const auto& f : unwinder.unwind(r, 32).frames) frames.push_back(f.symbol);
        stacks.push_back(frames);
      }
    } catch (const std::exception& e) {
      stacks.push_back(std::string("unreadable: ") + e.what());
    }
    event("hang", {{"crash", id}, {"reason", why}, {"cpus", stacks}});
    last_crash_ = {{"crash", id}, {"time", record.time}, {"summary", "the guest hung: " + why}, {"decision", "reboot"},
                   {"reason", why}};
    json analysis = {{"kind", "hang"}, {"cpus", stacks}};
    save_crash(record, analysis, {{"resume", false}, {"reason", why}});
    hold_crash_bundle(record, capture_for_bundle(record.registers, -1), analysis, json(), "reboot", why);
  } catch (const Error& e) {
    options_.say(std::string("cannot inspect the hung guest: ") + e.what());
  }
  reboot_guest(why, id);
}

bool Supervisor::guest_has_kdump() {
  try {
    Kernel& kernel = guest_kernel();
    auto image = kernel.symbols().address_of("kexec_crash_image");
    return image && kernel.memory().read_u64(*image) != 0;
  } catch (const std::exception&) {
    return false;
  }
}

void Supervisor::leave_boot(const char* event_name, const std::string& outcome, const std::string& reason,
                            std::uint64_t crash, const char* to_clients) {
  event(event_name, {{"crash", crash}, {"reason", reason}});
  last_crash_["outcome"] = outcome;
  if (pending_bundle_) {
    pending_bundle_->recovery["reboot_reason"] = reason;
    finish_crash_bundle(outcome);
  }
  ++reboots_;
  old_boot_id_ = agent_->hello() ? agent_->hello()->boot_id : "";
  agent_->abandon(to_clients);
  verification_.reset();
  pause_after_crash_.reset();
}

void Supervisor::forget_boot() {
  // The next boot has other addresses (KASLR) and fresh code: nothing armed or patched holds.
  armed_profile_ = 0;
  quarantine_.clear();
  kernel_.reset();
}

void Supervisor::hand_to_guest_kdump(const std::string& reason, std::uint64_t crash) {
  // The operator armed kdump in the guest: an unrecoverable crash goes where they wanted it.
  // panic() runs on from its first instruction (the breakpoints removed, or it would stop there
  // again) and calls __crash_kexec(); what the kdump kernel does next (save a vmcore, reboot) is
  // the guest's business; its next boot says hello like any other.
  options_.say(fmt::format("crash {}: not recovered ({}); the guest's own kdump takes it", crash, reason));
  leave_boot("kdump", "handed to the guest's kdump", reason, crash, "the guest went to its kdump kernel");
  try {
    interceptor_->disarm();
    guest_state_ = "rebooting";
    machine_->resume();
  } catch (const Error& e) {
    options_.say(std::string("handing the crash to the guest's kdump failed: ") + e.what());
    reboot_guest(reason, crash);
    return;
  }
  forget_boot();
}

void Supervisor::reboot_guest(const std::string& reason, std::uint64_t crash) {
  options_.say(fmt::format("crash {}: rebooting the guest: {}", crash, reason));
  leave_boot("reboot", "rebooted", reason, crash, "the guest is rebooting");
  try {
    if (machine_->state() == RunState::running) machine_->pause();
    interceptor_->disarm();
    guest_state_ = "rebooting";  // before the reset: its RESET event is ours
    machine_->reset();
    machine_->resume();
  } catch (const Error& e) {
    options_.say(std::string("the reboot failed: ") + e.what());
    stop_requested_ = true;
    stop_reason_ = "the crashed guest could not be rebooted";
    exit_code_ = static_cast<int>(ExitCode::guest_crashed);
    return;
  }
  forget_boot();
}

void Supervisor::after_reboot_hello() {
  const auto& hello = *agent_->hello();
  guest_state_ = "running";
  event("rebooted", {{"boot_id", hello.boot_id}, {"previous_boot_id", old_boot_id_}});
  options_.say(fmt::format("guest \"{}\" is up again after the reboot: boot id {}", options_.machine.name, hello.boot_id));
  old_boot_id_.clear();
  if (!profile_->busy()) profile_->collect(agent_->modules_generation());
}

void Supervisor::save_crash(const repair::CrashRecord& record, const json& analysis, const json& plan) {
  std::error_code ec;
  std::filesystem::create_directories(dir_.file("crashes"), ec);
  std::string path = fmt::format("{}/crash-{}.json", dir_.file("crashes"), record.id);
  std::ofstream out(path, std::ios::trunc);
  out << json{{"record", repair::to_json(record)}, {"analysis", analysis}, {"plan", plan}}.dump(2, ' ', false, json::error_handler_t::replace) << "\n";
}

void Supervisor::prepare_bundle_arena() {
  if (!profile_ || profile_->busy()) return;
  if (!profile_->number() || profile_->number() == bundle_arena_profile_) return;
  bundle_arena_profile_ = profile_->number();
  try {
    Kernel& kernel = guest_kernel();
    bundles_->prepare(machine_->memory(), &kernel);
  } catch (const std::exception& e) {
    options_.say(std::string("no memory prepared for bundle snapshots (a crash will pause longer): ") + e.what());
  }
}

BundleCapture Supervisor::capture_for_bundle(std::vector<X86Registers> registers, int crash_cpu) {
  const Kernel* kernel = nullptr;
  try {
    kernel = &guest_kernel();
  } catch (const std::exception& e) {
    options_.say(std::string("the bundle's copy of memory cannot be filtered (every page is copied): ") + e.what());
  }
  return capture_guest(*machine_, kernel, kernel ? guest_profile_.get() : nullptr, std::move(registers), crash_cpu,
                       options_.bundles.filter, bundles_->arena());
}

void Supervisor::hold_crash_bundle(const repair::CrashRecord& record, BundleCapture capture, const json& analysis,
                                   const json& plan, const std::string& decision, const std::string& reason) {
  if (pending_bundle_) finish_crash_bundle("superseded by a later crash before its outcome was known");
  BundleJob job;
  job.guest = options_.machine.name;
  job.crash = record.id;
  job.capture = std::move(capture);
  job.profile = guest_profile_;
  job.crash_record = repair::to_json(record);
  job.analysis = analysis;
  job.plan = plan;
  job.recovery = {{"enabled", options_.recovery.enabled}, {"decision", decision}, {"reason", reason}};
  job.timings = json::object();
  // Events of this crash logged before its bundle was begun (pvpanic's and the hang's own).
  for (const auto& e : events_.recent())
    if (e.is_object() && e.value("crash", std::uint64_t{0}) == record.id) job.events.push_back(e);
  pending_bundle_ = std::move(job);
}

void Supervisor::finish_crash_bundle(const std::string& outcome, json more_timings) {
  if (!pending_bundle_) return;
  BundleJob job = std::move(*pending_bundle_);
  pending_bundle_.reset();
  job.recovery["outcome"] = outcome;
  job.timings.update(more_timings);
  bundles_->submit(std::move(job));
}

void Supervisor::collect_bundles() {
  for (auto& r : bundles_->poll()) {
    json fields = {{"reason", r.reason}, {"write_ms", r.write_ms}};
    if (r.reason == "crash") fields["crash"] = r.crash;
    if (r.path.empty()) {
      fields["error"] = r.error;
      event("bundle-failed", fields);
      options_.say("writing a bundle failed: " + r.error);
    } else {
      fields["path"] = r.path;
      fields["vmcore_bytes"] = r.vmcore_bytes;
      if (!r.removed.empty()) fields["removed"] = r.removed;
      event("bundle", fields);
      options_.say(fmt::format("bundle written: {} ({:.0f} ms)", r.path, r.write_ms));
      if (r.reason == "crash" && last_crash_.is_object() && last_crash_.value("crash", std::uint64_t{0}) == r.crash)
        last_crash_["bundle"] = r.path;
    }
    if (r.reply_fd >= 0) {
      auto it = clients_.find(r.reply_fd);
      if (it == clients_.end()) continue;
      if (r.path.empty()) it->second->reply_error(static_cast<int>(ExitCode::failure), r.error);
      else it->second->reply({{"path", r.path}, {"write_ms", r.write_ms}, {"vmcore_bytes", r.vmcore_bytes}});
      clients_.erase(it);
    }
  }
}

// `immortal bundle NAME`: a bundle of the guest as it is now (healthy, hung or misbehaving); it
// is stopped only while its memory is copied. The answer waits until the bundle is written.
void Supervisor::answer_bundle(int fd) {
  auto& client = *clients_.at(fd);
  if (!machine_ || guest_state_ == "shut off" || guest_state_ == "rebooting" || guest_state_ == "starting") {
    client.reply_error(static_cast<int>(ExitCode::failure), "the guest is " + guest_state_ + ": nothing to take a bundle of");
    clients_.erase(fd);
    return;
  }
  try {
    BundleJob job;
    job.guest = options_.machine.name;
    job.reason = "on-demand";
    auto paused_at = Clock::now();
    job.capture = while_paused([&] {
      std::vector<X86Registers> regs;
      for (int v = 0; v < machine_->vcpu_count(); ++v) regs.push_back(machine_->read_registers(v));
      return std::make_optional(capture_for_bundle(std::move(regs), -1));
    }).value();
    job.profile = guest_profile_;
    job.reply_fd = fd;
    // The copy's time, and the whole stop as the guest saw it (stop, registers, copy, resume).
    double paused_ms = ms_since(paused_at);
    job.timings = {{"guest_paused_ms", paused_ms}};
    json fields = {{"reason", "on-demand"}, {"snapshot_pause_ms", job.capture.pause_ms}, {"guest_paused_ms", paused_ms}};
    event("bundle-snapshot", fields);
    bundles_->submit(std::move(job));
  } catch (const std::exception& e) {
    client.reply_error(static_cast<int>(ExitCode::failure), std::string("cannot take a bundle: ") + e.what());
    clients_.erase(fd);
  }
}

void Supervisor::answer_unquarantine(int fd, const json& request) {
  auto& client = *clients_.at(fd);
  std::vector<std::string> names;
  const json& given = request.value("functions", json::array());
  if (given.is_array())
    for (const auto& n : given)
      if (n.is_string()) names.push_back(n.get<std::string>());
  bool all = request.value("all", false);
  if (names.empty() && !all) {
    client.reply_error(static_cast<int>(ExitCode::usage), "name the functions to unquarantine, or --all");
    clients_.erase(fd);
    return;
  }
  if (guest_state_ != "running") {
    client.reply_error(static_cast<int>(ExitCode::failure), "the guest is " + guest_state_ + ", not running");
    clients_.erase(fd);
    return;
  }
  try {
    Kernel& kernel = guest_kernel();
    auto done = while_paused([&] { return quarantine_.release(*machine_, kernel, names); });
    event("unquarantine", {{"result", done}});
    client.reply({{"released", done}});
  } catch (const Error& e) {
    client.reply_error(e.exit_code(), e.what());
  }
  clients_.erase(fd);
}

}  // namespace immortal::vmm
