#include "supervisor.h"

#include "base/clock.h"
#include "base/content_digest.h"
#include "base/error.h"
#include "base/terminal_text.h"
#include "control/status.h"
#include "kernel/orc_unwind.h"
#include "repair/shared_kernel_files.h"
#include "upgrade.h"

#include <malloc.h>
#include <poll.h>
#include <signal.h>
#include <sys/signalfd.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>

namespace immortal::vmm {

namespace {
// From the agent's hello to armed crash interception (the profile takes ~2 s under TCG).
constexpr auto kArmTimeout = std::chrono::seconds(60);
constexpr auto kLoopTick = std::chrono::milliseconds(100);

// The kernel image's ORC tables, read from the guest's memory and kept once per host for the
// repair agents (the supervisor itself does not unwind); what `status` says of them. The
// supervisor keeps no copy of its own: they are only for its agents.
json share_unwind_tables(const Kernel& kernel, const std::string& shared) {
  std::string why;
  try {
    (void)OrcUnwinder(kernel).find(kernel.symbol("_stext"));
    if (auto table = kernel.orc_image()) {
      if (auto host = host_kernel_orc(shared, table->bytes, &why)) {
        if (auto view = table->viewing(host->bytes, host->keeper)) {
          kernel.keep_orc_image(view);
          return {{"shared", true}, {"file", host->path}, {"entries", view->size()}, {"bytes", view->bytes.size()}};
        }
      }
    }
  } catch (const std::exception& e) {
    why = e.what();
  }
  kernel.keep_orc_image(nullptr);
  return {{"shared", false}, {"why", why.empty() ? "the kernel's unwind tables were not read" : why}};
}
}  // namespace

Supervisor::Supervisor(SupervisorOptions options, InstanceDir dir, const MachineBackend& backend)
    : options_(std::move(options)),
      dir_(std::move(dir)),
      backend_(backend),
      state_([this](const std::string& bug) {
        options_.say(bug);
        event("bug", {{"detail", bug}});
      }),
      events_([&] {
        std::vector<std::string> paths{dir_.file("events.jsonl")};
        if (!options_.event_log.empty()) paths.push_back(options_.event_log);
        return paths;
      }()),
      quarantine_(dir_.file("quarantine.json")),
      console_(options_.machine.console_log, options_.echo_console) {
  // Messages quote the guest (console lines, comm, panic text): escaped for the terminal.
  if (!options_.say)
    options_.say = [](const std::string& line) { std::cerr << "immortal: " << terminal_safe(line, true) << "\n"; };
}

Supervisor::~Supervisor() {
  if (machine_ && !released_ && machine_->capabilities().owns_vm) machine_->terminate(std::chrono::seconds(2));
}

int Supervisor::run() {
  // glibc raises its mmap and trim thresholds each time a large block is freed (up to 32 MiB), so
  // the arena of a thread that wrote a bundle kept its freed top for the supervisor's life (8.8 MiB
  // after two crashes, measured), and malloc_trim does not trim a thread arena's top. Fixed
  // thresholds turn that growth off: blocks of 256 KiB and more are mapped and unmapped, and a
  // free top of more than 256 KiB goes back to the host.
  ::mallopt(M_MMAP_THRESHOLD, 256 << 10);
  ::mallopt(M_TRIM_THRESHOLD, 256 << 10);
  // Signals arrive through a descriptor in the poll loop, never in the middle of a request.
  sigset_t mask;
  sigemptyset(&mask);
  for (int s : {SIGINT, SIGTERM, SIGHUP}) sigaddset(&mask, s);
  ::sigprocmask(SIG_BLOCK, &mask, nullptr);
  ::signal(SIGPIPE, SIG_IGN);
  signal_fd_ = UniqueFd(::signalfd(-1, &mask, SFD_CLOEXEC | SFD_NONBLOCK));
  if (!signal_fd_) fail_os(ExitCode::failure, "signalfd", errno);

  try {
    if (options_.take_over) take_over(*options_.take_over);
    else boot();
    if (!stop_requested_) serve();
  } catch (...) {
    // A supervisor that fails while taking a VM over leaves it running for the next attempt.
    if (options_.take_over && machine_) release_instance();
    shutdown_machine();
    throw;
  }
  shutdown_machine();
  options_.say(released_ ? stop_reason_ : fmt::format("guest stopped ({})", stop_reason_));
  return exit_code_;
}

std::string Supervisor::shared_dir() const {
  return (std::filesystem::path(dir_.path()).parent_path() / ".repair-shared").string();
}

// The rooms around one VM; see docs/architecture.md for who talks to whom.
void Supervisor::build_rooms() {
  const auto& m = options_.machine;
  auto say = options_.say;
  auto emit = [this](const std::string& name, json fields) { event(name, std::move(fields)); };
  agent_ = std::make_unique<AgentChannel>(machine_->connect_agent_channel(Deadline::in(std::chrono::seconds(5))));
  profile_ = std::make_unique<ProfileCollector>(*agent_, dir_.file("profile"), say);
  // The kernel image's symbols, the kernel's BTF and its image's ORC tables once for every guest
  // of this kernel on the host (issue 20). Whether they are, and why not, is in `status`
  // (profile.kernel_symbols, profile.kernel_types, profile.kernel_unwind_tables).
  kernel_ = std::make_unique<LiveKernel>(
      *machine_, *profile_,
      [this, shared = shared_dir(), agents = options_.recovery.enabled](const PhysicalMemory& memory, const GuestProfile& profile) {
        auto kernel = Kernel::open(memory, profile, std::nullopt);
        if (const auto& own = kernel->symbols().image_symbols(); !own) {
          kernel_symbols_ = {{"shared", false}, {"why", "the profile's kallsyms has no kernel image symbols"}};
        } else {
          std::string why;
          auto host = host_image_symbols(shared, *own, &why);
          if (host && kernel->share_image_symbols(host))
            kernel_symbols_ = {{"shared", true}, {"file", shared + "/" + image_symbols_file_name(host->digest())},
                               {"symbols", host->size()}, {"bytes", host->bytes().size()}};
          else
            kernel_symbols_ = {{"shared", false}, {"why", why.empty() ? "the host's file differs" : why}};
        }
        if (const BtfTypes* own = kernel->btf(); !own) {
          kernel_types_ = {{"shared", false}, {"why", "the kernel's types are not the profile's BTF"}};
        } else {
          std::string why;
          auto host = host_kernel_btf(shared, *own, &why);
          if (host && kernel->share_btf(host->bytes, host->keeper))
            kernel_types_ = {{"shared", true}, {"file", host->path}, {"types", own->type_count()}, {"bytes", host->bytes.size()}};
          else
            kernel_types_ = {{"shared", false}, {"why", why.empty() ? "the host's file differs" : why}};
        }
        // Only the repair agents unwind: without recovery there are none to read the file.
        if (agents) kernel_unwind_ = share_unwind_tables(*kernel, shared);
        return kernel;
      });
  BundleSettings bundle_settings = options_.bundles;
  bundle_settings.agent = options_.repair.agent;  // it reads the reports too
  // One pool of prepared snapshot memory for every instance of this runtime directory (the host's).
  bundle_settings.arena_pool = ArenaPool::directory_for(std::filesystem::path(dir_.path()).parent_path().string());
  bundles_ = std::make_unique<CrashBundles>(bundle_settings, m.name, options_.recovery.enabled, events_, say, emit);
  if (options_.recovery.enabled) {
    MachineConfig vm = m;  // the guest's own QEMU and accelerator; its kernel unless told otherwise
    vm.name = m.name + "-repair";
    if (!options_.repair.vm_kernel.empty()) vm.kernel = options_.repair.vm_kernel;
    vm.disks.clear();  // never the guest's disks or networks: two VMs on one disk corrupt it
    vm.nets.clear();
    vm.channels.clear();
    vm.initrd.clear();
    // init_on_free: the pages its kernel frees (the initramfs it unpacked, the agent's scratch
    // while it parsed the profile) read as zeros, so they are given back as all-zero pages even
    // by a kernel that cannot describe its own page classes (repair/repair_vm_trim.h).
    vm.append = "console=ttyS0 quiet panic=-1 rdinit=/init init_on_free=1";
    // The agents' canary (docs/architecture.md, "Sandboxes") reaches the repair VM's agent as
    // its init's environment: there, the process analysing a crash dies of SIGSEGV.
    if (const char* canary = std::getenv("IMMORTAL_SANDBOX_CANARY"); canary && std::string_view(canary) == "1")
      vm.append += " IMMORTAL_SANDBOX_CANARY=1";
    vm.memory_bytes = options_.repair.vm_memory;  // 0: the broker sizes it from each payload
    // Two: the agent checks the kernel's code on the second while the first analyses the crash
    // (under TCG the check alone took 45-60 ms of a 110-230 ms engine). Paused while idle, so
    // the second costs only its QEMU thread's memory.
    vm.vcpus = 2;
    // Its agent's code and the kernel paths it takes fit in 24 MiB of translations: with its own
    // small kernel, the analysis took as long as with 32 MiB (bench/recovery, 59 and 60 ms median)
    // or with QEMU's default 1 GiB (which the Debian kernel filled to 50 MiB); at 16 MiB it
    // retranslated the agent's code and took 88 ms. Every MiB here is a MiB of every repair VM.
    vm.emulator_code_cache_bytes = 24ull << 20;
    vm.outlives_supervisor = false;  // ours alone: it ends with us (the guest's config may say otherwise)
    RepairSettings repair = options_.repair;
    // The repair VM's initramfs once for every instance of this runtime directory (the host's).
    repair.shared_dir = shared_dir();
    // A crash's snapshot is taken into the host pool's arenas anyway (its bundle): the repair VM
    // analyses it there…
    repair.arena_windows = [this](std::uint64_t guest_ram) {
      std::vector<ArenaWindow> out;
      for (const auto& w : bundles_->arena_windows(guest_ram)) out.push_back({w.fd, w.bytes});
      return out;
    };
    // …and loads each profile from a snapshot of the running guest taken there for it, so that it
    // is never given the guest's RAM (issue 20: a repair VM that could serve several guests).
    // (Snapshots of every page, --bundle-memory all, would not fit an arena: the VM sees the RAM.)
    if (bundle_settings.filter)
      repair.load_snapshot = [this]() -> std::unique_ptr<MemorySnapshot> {
        if (!state_.is(GuestState::running) || !kernel_->built()) return nullptr;
        return bundles_->snapshot_for_repair_load(*machine_, *kernel_);
      };
    // The kernel image's symbols, BTF and ORC tables as this supervisor holds them: the host's
    // copies, when it has them.
    repair.image_symbols = [this] { return kernel_->get().symbols().image_symbols(); };
    repair.image_base = [this] { return kernel_->get().symbols().image_base(); };
    repair.kernel_btf = [this, shared = shared_dir()]() -> std::optional<SharedFileRef> {
      const BtfTypes* btf = kernel_->get().btf();
      if (!btf || !btf->shared()) return std::nullopt;
      return SharedFileRef{shared + "/" + kernel_btf_file_name(btf->digest()), btf->bytes().size(), btf->keeper(), btf->digest()};
    };
    repair.kernel_unwind = [this, shared = shared_dir()]() -> std::optional<SharedFileRef> {
      auto table = kernel_->get().orc_image();
      if (!table || !table->keeper) return std::nullopt;
      std::string digest = content_digest(table->bytes);
      return SharedFileRef{shared + "/" + kernel_orc_file_name(digest), table->bytes.size(), table->keeper, digest};
    };
    repair_ = std::make_unique<RepairBroker>(repair, backend_.launch_helper, vm, dir_.file("repair"), say, emit);
  }
  recovery_ = std::make_unique<RecoveryCoordinator>(RecoveryParts{
      options_.recovery, *machine_, *agent_, state_, *kernel_, *profile_, ledger_, *bundles_, quarantine_, repair_.get(),
      dir_.file("crashes"), emit, say, [this](std::size_t n) { return console_.last_lines(n); },
      [this](const std::string& how) { report_ready(how); },
      [this](const std::string& reason) { stop(reason, static_cast<int>(ExitCode::guest_crashed)); }});
  if (!options_.metrics_listen.empty() && !metrics_server_) metrics_server_ = std::make_unique<MetricsServer>(options_.metrics_listen);
  if (control_) control_->listen(dir_.file("control.sock"));  // a hand-over rolled back: its request waits
  else control_ = std::make_unique<ControlServer>(dir_.file("control.sock"));
  introspection_ = std::make_unique<LiveIntrospection>(options_.repair.agent, dir_.file("profile"), *machine_);
  commands_ = std::make_unique<CommandTargets>(CommandTargets{
      m.name, state_, *machine_, *agent_, *kernel_, events_, quarantine_, *bundles_, *introspection_, emit, say,
      [this] { return status(); }, [this] { return metrics_.render(status()); },
      [this](bool force, bool shutdown) {
        if (force) options_.stop_grace = std::chrono::milliseconds(0);
        shut_down_vm_ = shutdown;
        stop("stop requested", 0);
      },
      [this](ControlRequest r) { upgrade_request_ = std::move(r); }});
}

void Supervisor::boot() {
  auto m = options_.machine;
  m.outlives_supervisor = true;  // a restart or upgrade of immortal takes it over (attach)
  options_.say(fmt::format("starting guest \"{}\": {} vCPUs, {} MiB, accelerator {}", m.name, m.vcpus,
                           m.memory_bytes >> 20, to_string(m.accelerator)));
  machine_ = backend_.launch(m, Deadline::in(kLaunchTimeout));
  build_rooms();
  started_ = Clock::now();
  machine_->resume();
  state_.change(GuestState::booting, "the VM started");
  wait_for_hello(false);
}

// The agent's hello (a new connection gets one, from a new boot or the same one). Attaching, a
// guest that stays silent is a hang; starting, it is a failed start.
void Supervisor::wait_for_hello(bool attaching) {
  const auto& m = options_.machine;
  auto deadline = Deadline::in(options_.hello_timeout);
  while (!agent_->hello()) {
    poll_once(/*agent_errors_are_fatal=*/!attaching);
    if (stop_requested_) return;
    if (state_.is(GuestState::shut_off))
      fail(ExitCode::qemu, "the guest stopped while booting; last console lines:\n{}", console_.last_lines(10));
    if (!attaching && state_.is(GuestState::crashed))
      fail(ExitCode::guest_crashed, "the guest kernel crashed while booting; last console lines:\n{}",
           console_.last_lines(15));
    if (attaching) recovery_->tick();  // a reboot after a crash found at attach goes on meanwhile
    if (agent_->closed()) fail(ExitCode::agent, "the guest agent's channel closed during boot");
    if (!agent_->hello() && deadline.expired()) {
      if (!attaching)
        fail(ExitCode::agent, "the guest agent did not say hello within {} s; last console lines:\n{}{}",
             options_.hello_timeout.count() / 1000, console_.last_lines(10), boot_hint(options_.machine));
      if (state_.is(GuestState::booting)) {
        state_.change(GuestState::running, "attached, the agent silent");
        recovery_->declare_hang(fmt::format("no hello from the guest agent within {} s of attaching",
                                            options_.hello_timeout.count() / 1000));
      }
      deadline = Deadline::in(options_.hello_timeout);
    }
  }
  boot_time_ = std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - started_);
  if (!state_.is(GuestState::rebooting)) state_.change(GuestState::running, "the agent said hello");
  const auto& hello = *agent_->hello();
  std::string summary = fmt::format("guest \"{}\" is up: agent hello after {:.2f} s — kernel {}, boot id {}, agent {}",
                                    m.name, boot_time_->count() / 1000.0, hello.kernel_release, hello.boot_id, hello.agent_version);
  options_.say(summary);
  event(attaching ? "attached-hello" : "started", {{"boot_id", hello.boot_id}, {"kernel_release", hello.kernel_release},
                    {"boot_seconds", boot_time_->count() / 1000.0}, {"recovery", options_.recovery.enabled}});
  if (!profile_->current() || profile_->boot_id() != hello.boot_id) profile_->collect(agent_->modules_generation());
  ready_summary_ = summary;
  if (!options_.recovery.enabled) report_ready("recovery is off");
  persist();
}

void Supervisor::note_serial_rearms() {
  // The agent's count restarts with it (a new boot, a respawn): only a rise is news.
  std::uint64_t now = agent_->serial_rearmed();
  if (now > serial_rearmed_) {
    options_.say(fmt::format("the guest agent re-armed {} serial port(s) that had stopped sending with output queued (a lost "
                             "transmit interrupt, as an oops printed on the console can leave it); it does so again while one stays still", now - serial_rearmed_));
    event("serial-rearmed", {{"ports", now - serial_rearmed_}, {"since_agent_start", now}});
  }
  serial_rearmed_ = now;
}

void Supervisor::serve() {
  while (!stop_requested_) {
    poll_once(/*agent_errors_are_fatal=*/false);
    // A new boot, or a module loaded or unloaded: the profile must describe the kernel as it is now.
    if (state_.is(GuestState::running) && !profile_->busy() && !agent_->closed() &&
        (agent_->modules_generation() != profile_->generation() ||
         agent_->hello()->boot_id != profile_->boot_id()))
      profile_->collect(agent_->modules_generation());
    note_serial_rearms();
    try {
      recovery_->tick();
    } catch (const std::exception& e) {
      // One turn's failure must not end the instance: the guest matters more (reported as a bug).
      options_.say(std::string("bug: the recovery room failed one turn: ") + e.what());
      event("bug", {{"detail", e.what()}});
    }
    // Never keep `run --detach` waiting on a profile that cannot come.
    if (!ready_summary_.empty() && (agent_->closed() || Clock::now() - started_ - *boot_time_ > kArmTimeout))
      report_ready(std::string("crash interception NOT armed (no guest profile") +
                   (agent_->closed() ? ": the agent's channel closed)" : " in time)"));
    if (state_.is(GuestState::shut_off) && !stop_requested_) stop("the guest powered off", exit_code_);
    persist();
    if (upgrade_request_) {
      auto request = std::move(*upgrade_request_);
      upgrade_request_.reset();
      upgrade(std::move(request));
    }
  }
}

void Supervisor::poll_once(bool agent_errors_are_fatal) {
  std::vector<pollfd> fds{{signal_fd_.get(), POLLIN, 0}};
  if (!agent_->closed()) fds.push_back({agent_->fd(), POLLIN, 0});
  for (int fd : machine_->event_fds()) fds.push_back({fd, POLLIN, 0});
  control_->add_to(fds);
  introspection_->add_to(fds);
  ::poll(fds.data(), fds.size(), static_cast<int>(kLoopTick.count()));

  console_.pump();
  handle_signals();
  handle_machine_events();
  for (const auto& r : bundles_->poll())
    if (r.reason == "crash" && !r.path.empty()) ledger_.bundle_written(r.crash, r.path);
  if (repair_) repair_->poll();
  introspection_->poll();
  // Commands first, the agent after: a long command must not leave heartbeats unread for the hang check.
  control_->serve(fds, [this](ControlRequest request) { dispatch_command(std::move(request), *commands_); });
  // What the VM did during a long command (a dump stops and resumes it), before anything judges it.
  handle_machine_events();
  report_tick();
  try {
    agent_->on_readable();
  } catch (const Error& e) {
    if (agent_errors_are_fatal) throw;
    options_.say(e.what());  // the guest keeps running; status shows the agent as gone
  }
}

void Supervisor::handle_signals() {
  signalfd_siginfo info{};
  while (::read(signal_fd_.get(), &info, sizeof info) == static_cast<ssize_t>(sizeof info))
    stop(fmt::format("signal {}", ::strsignal(static_cast<int>(info.ssi_signo))), 128 + static_cast<int>(info.ssi_signo));
}

void Supervisor::handle_machine_events() {
  for (const auto& e : machine_->drain_events()) {
    if (e.kind == MachineEvent::Kind::shutdown) {
      state_.change(GuestState::shut_off, "the VM shut down");
      continue;
    }
    if (e.kind == MachineEvent::Kind::vm_exited) {
      // Not a power-off: the VM went away under the guest (killed, crashed, told to quit).
      state_.change(GuestState::shut_off, "the VM process ended");
      event("vm-exited", {{"detail", e.detail}});
      if (!stop_requested_) stop("the VM ended without the guest powering off: " + e.detail, static_cast<int>(ExitCode::qemu));
      continue;
    }
    try {
      recovery_->on_event(e);
    } catch (const std::exception& err) {
      options_.say(fmt::format("bug: handling the machine event {} failed: {}", to_string(e.kind), err.what()));
      event("bug", {{"detail", err.what()}, {"machine_event", to_string(e.kind)}});
    }
  }
}

void Supervisor::stop(const std::string& reason, int exit_code) {
  stop_requested_ = true;
  stop_reason_ = reason;
  exit_code_ = exit_code;
}

void Supervisor::shutdown_machine() {
  if (!machine_ || released_) return;
  if (!machine_->capabilities().owns_vm && !shut_down_vm_) return let_go();  // someone else's VM runs on
  if (control_) control_->close_all("the instance is stopping");
  if (agent_) agent_->abandon("the instance is stopping");
  // Ask the guest to power itself off (it flushes what it has), then make sure the VM is gone.
  if (state_.is(GuestState::running) && agent_ && !agent_->closed() && options_.stop_grace.count() > 0) {
    try {
      agent_->poweroff();
      auto deadline = Deadline::in(options_.stop_grace);
      while (!state_.is(GuestState::shut_off) && !deadline.expired()) {
        std::vector<pollfd> fds;
        for (int fd : machine_->event_fds()) fds.push_back({fd, POLLIN, 0});
        ::poll(fds.data(), fds.size(), 50);
        for (const auto& e : machine_->drain_events())
          if (e.kind == MachineEvent::Kind::shutdown) state_.change(GuestState::shut_off, "powered off at stop");
      }
    } catch (const Error&) {
      // Fall through to terminate.
    }
  }
  console_.pump();
  machine_->terminate(std::chrono::seconds(2));
  state_.change(GuestState::shut_off, "the instance stopped");
  if (bundles_) bundles_->stop();
  recovery_.reset();  // it holds the machine
  machine_.reset();
  ::unlink(dir_.file("state.json").c_str());  // nothing left to attach to
}

}  // namespace immortal::vmm
