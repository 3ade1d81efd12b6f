#include "qemu/qemu_machine.h"

#include "base/error.h"
#include "base/process_stat.h"
#include "base/sealed_memfd.h"
#include "protocol/frame.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <poll.h>
#include <unistd.h>

#include <fstream>
#include <sstream>
#include <thread>

namespace immortal::qemu {

using vmm::MachineEvent;
using vmm::RunState;

namespace {

constexpr auto kCommandTimeout = std::chrono::seconds(10);

// The last lines QEMU printed, to explain why it stopped.
std::string tail_of(const std::string& path, std::size_t max_lines) {
  std::string out;
  for (const auto& line : last_lines(path, max_lines)) out += (out.empty() ? "" : " | ") + line;
  return out.empty() ? "(QEMU printed nothing)" : out;
}

// When the process started (clock ticks since boot), 0 when it is gone: with the pid it names one
// process for the life of the host.
std::uint64_t process_start_time(int pid) {
  auto stat = process_stat(pid);
  return stat ? stat->start_time : 0;
}

std::string describe_status(int status) {
  if (WIFEXITED(status)) return fmt::format("exit status {}", WEXITSTATUS(status));
  if (WIFSIGNALED(status)) return fmt::format("killed by signal {}", WTERMSIG(status));
  return "stopped";
}

// In the child about to become a helper VM's QEMU: fork a watchman that keeps root, dies with
// QEMU (its parent: PR_SET_PDEATHSIG survives exec) and kills QEMU when the lifeline pipe on its
// standard input reaches end of file, that is when every process of the supervisor holding its
// write end is gone. It is a shell, not a fork of us, so it holds none of the supervisor's memory
// or descriptors (not the instance's lock, not guest RAM). Async-signal-safe calls only: we are a
// fork of a threaded process.
void watch_over_helper(int lifeline) {
  pid_t qemu = ::getpid();
  if (::fork() != 0) return;  // QEMU goes on (a failed fork leaves only PR_SET_PDEATHSIG)
  ::prctl(PR_SET_PDEATHSIG, SIGKILL);
  if (::getppid() != qemu) ::_exit(0);
  ::dup2(lifeline, 0);
  ::close_range(1, ~0u, 0);
  // $PPID is QEMU; were QEMU gone, PR_SET_PDEATHSIG would have killed the shell first.
  const char* argv[] = {"/bin/sh", "-c", "while read -r _; do :; done; kill -KILL $PPID", "immortal-watchman", nullptr};
  ::execv(argv[0], const_cast<char* const*>(argv));
  ::_exit(127);
}

}  // namespace

std::unique_ptr<QemuMachine> QemuMachine::launch(const vmm::MachineConfig& config, Deadline deadline) {
  if (config.kernel.empty() && config.disks.empty())
    fail(ExitCode::bad_input, "nothing to boot: no kernel and no disk");
  for (const auto* file : {&config.kernel, &config.initrd}) {
    if (!file->empty() && ::access(file->c_str(), R_OK) != 0)
      fail(ExitCode::bad_input, "cannot read {} {}: {}", file == &config.kernel ? "kernel" : "initrd",
           *file, std::strerror(errno));
  }
  std::unique_ptr<QemuMachine> m(new QemuMachine);
  m->config_ = config;

  m->ram_fd_ = sealed_memfd("immortal-ram-" + config.name, config.memory_bytes);
  m->memory_ = std::make_unique<SharedRamMemory>(m->ram_fd_.get(), config.memory_bytes,
                                                 q35_ram_layout(config.memory_bytes));

  std::vector<std::string> args = qemu_command_line(config, m->ram_fd_.get());
  std::vector<char*> argv;
  for (auto& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);

  std::string log_path = path_in(config.runtime_dir, "qemu.log");
  UniqueFd log(::open(log_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600));
  if (!log) fail_os(ExitCode::failure, "create " + log_path, errno);
  // The doorbell's FIFOs (QEMU opens both read-write: neither end blocks).
  if (!config.doorbell.empty())
    for (const char* end : {".in", ".out"}) {
      std::string fifo = config.doorbell + end;
      ::unlink(fifo.c_str());
      if (::mkfifo(fifo.c_str(), 0600) != 0) fail_os(ExitCode::failure, "make the doorbell " + fifo, errno);
    }
  // A new boot's console log starts empty (QEMU only appends to it).
  if (!config.console_log.empty()) {
    UniqueFd console(::open(config.console_log.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600));
    if (!console) fail_os(ExitCode::failure, "create " + config.console_log, errno);
  }
  int status_pipe[2];
  if (::pipe2(status_pipe, O_CLOEXEC) != 0) fail_os(ExitCode::failure, "pipe", errno);
  UniqueFd status_read(status_pipe[0]), status_write(status_pipe[1]);

  // A helper VM that drops root loses PR_SET_PDEATHSIG with its uid (prctl(2)): its watchman
  // reads this pipe, whose write end only the supervisor holds, and kills it at end of file.
  bool needs_watchman = !config.outlives_supervisor && !qemu_run_as(config).empty();
  UniqueFd lifeline_read;
  if (needs_watchman) {
    int lifeline[2];
    if (::pipe2(lifeline, O_CLOEXEC) != 0) fail_os(ExitCode::failure, "pipe", errno);
    lifeline_read = UniqueFd(lifeline[0]);
    m->lifeline_ = UniqueFd(lifeline[1]);
  }

  pid_t parent = ::getpid();
  pid_t pid = ::fork();
  if (pid < 0) fail_os(ExitCode::failure, "fork", errno);
  if (pid == 0) {
    if (config.outlives_supervisor) {
      // The guest lives on when its supervisor ends (a restart, an upgrade, a SIGKILL): a session
      // of its own, so no terminal hangup or group signal meant for the supervisor reaches it.
      ::setsid();
    } else {
      // A helper VM must not outlive us, whatever kills us (even SIGKILL).
      ::prctl(PR_SET_PDEATHSIG, SIGKILL);
      if (::getppid() != parent) ::_exit(1);
      ::setpgid(0, 0);  // a Ctrl-C on the terminal is ours to handle, not QEMU's
      if (needs_watchman) watch_over_helper(lifeline_read.get());
    }
    sigset_t all;
    sigemptyset(&all);
    ::sigprocmask(SIG_SETMASK, &all, nullptr);
    int null = ::open("/dev/null", O_RDONLY);
    ::dup2(null, 0);
    ::dup2(log.get(), 1);
    ::dup2(log.get(), 2);
    int flags = ::fcntl(m->ram_fd_.get(), F_GETFD);
    ::fcntl(m->ram_fd_.get(), F_SETFD, flags & ~FD_CLOEXEC);
    for (const auto& w : config.shared_windows) ::fcntl(w.fd, F_SETFD, ::fcntl(w.fd, F_GETFD) & ~FD_CLOEXEC);
    ::execvp(argv[0], argv.data());
    int err = errno;
    (void)!::write(status_write.get(), &err, sizeof err);
    ::_exit(127);
  }
  lifeline_read.reset();
  m->pid_ = pid;
  m->ram_fd_in_vm_ = m->ram_fd_.get();
  status_write.reset();
  int exec_errno = 0;
  if (::read(status_read.get(), &exec_errno, sizeof exec_errno) == static_cast<ssize_t>(sizeof exec_errno)) {
    m->reap(true);
    if (exec_errno == ENOENT)
      fail(ExitCode::qemu, "QEMU not found: {} (install qemu-system-x86, or pass --qemu PATH)", qemu_binary(config));
    fail(ExitCode::qemu, "cannot execute QEMU {}: {}", qemu_binary(config), std::strerror(exec_errno));
  }

  // Gives QEMU a moment to finish printing and exiting; true if it did exit.
  auto exits_soon = [&] {
    for (int i = 0; i < 100 && !m->reap(false); ++i) std::this_thread::sleep_for(std::chrono::milliseconds(10));
    return m->exited_;
  };
  auto died = [&](const std::string& when) {
    return Error(ExitCode::qemu, fmt::format("QEMU {} ({}): {}", when, m->exit_description_, tail_of(log_path, 3)));
  };
  try {
    m->start_time_ = process_start_time(pid);
    m->connect(deadline);
  } catch (const Error&) {
    // A connection reset or a closed monitor usually means QEMU is exiting: say why.
    if (exits_soon()) throw died("exited at start");
    throw;
  }
  return m;
}

void QemuMachine::connect(Deadline deadline) {
  UniqueFd qmp_socket;
  while (!qmp_socket) {
    if (reap(false)) fail(ExitCode::qemu, "QEMU exited ({})", exit_description_);
    try {
      qmp_socket = connect_unix(path_in(config_.runtime_dir, "qmp.sock"));
    } catch (const Error&) {
      if (deadline.expired()) throw;
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
  }
  qmp_ = std::make_unique<QmpClient>(std::move(qmp_socket), deadline);
  if (!our_child_) {
    // Before the gdbstub connects (which stops the VM): was it running, or stopped at one of the
    // old supervisor's breakpoints (status "debug"), or paused by it?
    std::string s = qmp_->execute("query-status", json::object(), deadline).value("status", "");
    state_before_attach_ = s == "running"          ? RunState::running
                           : s == "guest-panicked" ? RunState::panicked
                           : s == "shutdown"       ? RunState::shutdown
                                                   : RunState::paused;
  }
  state_ = RunState::paused;
  vcpus_ = std::make_unique<GdbVcpus>(connect_unix(path_in(config_.runtime_dir, "gdb.sock")), deadline);
  if (vcpus_->count() != config_.vcpus)
    fail(ExitCode::qemu, "gdbstub reports {} vCPUs, expected {}", vcpus_->count(), config_.vcpus);
  if (!our_child_) {
    // The gdbstub stopped the VM when we connected: wait for that stop, then forget its events
    // (the supervisor decides when the VM runs again).
    auto settle = Deadline::in(std::chrono::seconds(2));
    while (!settle.expired() && qmp_->execute("query-status", json::object(), deadline).value("running", false))
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    vcpus_->client().take_stops();
    qmp_->take_events();
  }
}

std::unique_ptr<QemuMachine> QemuMachine::attach(const vmm::MachineConfig& config, const json& handle, Deadline deadline) {
  std::unique_ptr<QemuMachine> m(new QemuMachine);
  m->config_ = config;
  m->our_child_ = false;
  if (!handle.is_object() || !handle.contains("pid") || !handle["pid"].is_number_integer() ||
      !handle.contains("ram_fd") || !handle["ram_fd"].is_number_integer() || !handle.contains("start_time") ||
      !handle["start_time"].is_number_unsigned())
    fail(ExitCode::bad_input, "the instance's VM handle is malformed: {}", handle.dump());
  m->pid_ = handle["pid"].get<int>();
  m->ram_fd_in_vm_ = handle["ram_fd"].get<int>();
  m->start_time_ = handle["start_time"].get<std::uint64_t>();
  // The pid must still be that QEMU, not a process that got its number since.
  if (m->pid_ <= 0 || ::kill(m->pid_, 0) != 0 || process_start_time(m->pid_) != m->start_time_)
    fail(ExitCode::qemu, "the VM of \"{}\" (QEMU pid {}) is gone", config.name, m->pid_);
  m->pidfd_ = UniqueFd(static_cast<int>(::syscall(SYS_pidfd_open, m->pid_, 0)));
  if (!m->pidfd_) fail_os(ExitCode::qemu, fmt::format("watch QEMU pid {}", m->pid_), errno);
  std::string ram = fmt::format("/proc/{}/fd/{}", m->pid_, m->ram_fd_in_vm_);
  m->ram_fd_ = UniqueFd(::open(ram.c_str(), O_RDWR | O_CLOEXEC));
  if (!m->ram_fd_) fail_os(ExitCode::qemu, "open the guest's RAM " + ram, errno);
  struct stat st {};
  if (::fstat(m->ram_fd_.get(), &st) != 0 || static_cast<std::uint64_t>(st.st_size) != config.memory_bytes)
    fail(ExitCode::qemu, "{} is not the guest's RAM ({} bytes, expected {})", ram, st.st_size, config.memory_bytes);
  m->memory_ = std::make_unique<SharedRamMemory>(m->ram_fd_.get(), config.memory_bytes, q35_ram_layout(config.memory_bytes));
  m->connect(deadline);
  return m;
}

json QemuMachine::attach_handle() const {
  return {{"pid", pid_}, {"ram_fd", ram_fd_in_vm_}, {"start_time", start_time_}};
}

void QemuMachine::release() {
  // Closing the sockets leaves QEMU as it is: running, with any breakpoints still set (a crash
  // while nobody is attached then stops the VM at its first instruction, for the next supervisor).
  released_ = true;
  vcpus_.reset();
  qmp_.reset();
}

QemuMachine::~QemuMachine() {
  if (!released_) terminate(std::chrono::seconds(2));
}

bool QemuMachine::reap(bool block) {
  if (exited_ || pid_ <= 0) return true;
  if (!our_child_) {
    // Not our child: its exit status is its new parent's; the pidfd says whether it ended.
    pollfd p{pidfd_.get(), POLLIN, 0};
    if (::poll(&p, 1, block ? -1 : 0) == 1) {
      exited_ = true;
      exit_description_ = "exited (not our child: its status is unknown)";
      state_ = RunState::shutdown;
    }
    return exited_;
  }
  int status = 0;
  pid_t r = ::waitpid(pid_, &status, block ? 0 : WNOHANG);
  if (r == pid_ || (r < 0 && errno == ECHILD)) {
    exited_ = true;
    exit_description_ = r == pid_ ? describe_status(status) : "gone";
    state_ = RunState::shutdown;
  }
  return exited_;
}

void QemuMachine::resume() {
  qmp_->execute("cont", json::object(), Deadline::in(kCommandTimeout));
  state_ = RunState::running;
}

namespace {

// QEMU stamps events with its wall clock; durations here are on the monotonic one. Both are
// read now, so the event's age carries over (a wall-clock step in between would shift it: the
// callers check the answer against their own times).
std::optional<std::chrono::steady_clock::time_point> on_steady_clock(std::optional<WallTime> at) {
  if (!at) return std::nullopt;
  auto age = std::chrono::system_clock::now() - *at;
  return std::chrono::steady_clock::now() - std::chrono::duration_cast<std::chrono::steady_clock::duration>(age);
}

}  // namespace

std::optional<std::chrono::steady_clock::time_point> QemuMachine::last_stop_time() {
  if (!qmp_ || qmp_->closed()) return std::nullopt;
  return on_steady_clock(qmp_->last_event_time("STOP"));
}

std::optional<std::chrono::steady_clock::time_point> QemuMachine::last_resume_time() {
  if (!qmp_ || qmp_->closed()) return std::nullopt;
  return on_steady_clock(qmp_->last_event_time("RESUME"));
}

void QemuMachine::pause() {
  qmp_->execute("stop", json::object(), Deadline::in(kCommandTimeout));
  state_ = RunState::paused;
}

RunState QemuMachine::state() {
  if (reap(false) || qmp_->closed()) return RunState::shutdown;
  json status = qmp_->execute("query-status", json::object(), Deadline::in(kCommandTimeout));
  std::string s = status.value("status", "");
  if (s == "running") state_ = RunState::running;
  else if (s == "guest-panicked") state_ = RunState::panicked;
  else if (s == "shutdown") state_ = RunState::shutdown;
  else if (s == "prelaunch") state_ = RunState::starting;
  else state_ = RunState::paused;  // paused, debug, suspended, io-error, ...
  return state_;
}

void QemuMachine::terminate(std::chrono::milliseconds grace) {
  if (released_ || reap(false)) return;
  auto deadline = Deadline::in(grace);
  try {
    if (qmp_ && !qmp_->closed()) qmp_->execute("quit", json::object(), deadline);
  } catch (const std::exception&) {
    // QEMU may close the socket before answering "quit"; the wait below decides.
  }
  while (!reap(false) && !deadline.expired()) std::this_thread::sleep_for(std::chrono::milliseconds(5));
  if (!reap(false)) {
    ::kill(pid_, SIGKILL);
    reap(true);
  }
}

void QemuMachine::require_paused(const char* what) {
  // The gdbstub stops a running VM on any byte it receives; never let that happen by accident.
  if (state_ != RunState::paused && state_ != RunState::panicked)
    fail(ExitCode::failure, "{} needs the machine paused (it is {})", what, vmm::to_string(state_));
}

X86Registers QemuMachine::read_registers(int vcpu) {
  require_paused("reading registers");
  return vcpus_->read_registers(vcpu);
}

void QemuMachine::write_registers(int vcpu, const X86Registers& registers) {
  require_paused("writing registers");
  vcpus_->write_registers(vcpu, registers);
}

void QemuMachine::insert_breakpoint(std::uint64_t guest_virtual) {
  require_paused("setting a breakpoint");
  vcpus_->insert_breakpoint(guest_virtual);
}

void QemuMachine::remove_breakpoint(std::uint64_t guest_virtual) {
  require_paused("removing a breakpoint");
  vcpus_->remove_breakpoint(guest_virtual);
}

void QemuMachine::write_virtual(int vcpu, std::uint64_t guest_virtual, std::span<const std::uint8_t> bytes) {
  require_paused("writing guest code");
  // The gdbstub writes through cpu_memory_rw_debug(), which invalidates TCG's translations of
  // the page; a write to the shared RAM file from here would leave stale code running.
  vcpus_->write_virtual(vcpu, guest_virtual, bytes);
}

void QemuMachine::reset() { qmp_->execute("system_reset", json::object(), Deadline::in(kCommandTimeout)); }

std::vector<int> QemuMachine::event_fds() const {
  std::vector<int> fds;
  if (qmp_ && !qmp_->closed()) fds.push_back(qmp_->fd());
  if (vcpus_ && !vcpus_->client().closed()) fds.push_back(vcpus_->client().fd());
  return fds;
}

std::vector<MachineEvent> QemuMachine::drain_events() {
  std::vector<MachineEvent> events;
  for (const auto& stop : vcpus_->take_breakpoint_stops()) {  // SIGINT stops, our own pause(), come via QMP
    state_ = RunState::paused;
    events.push_back({MachineEvent::Kind::breakpoint, stop.vcpu, stop.raw});
  }
  for (const auto& e : qmp_->take_events()) {
    if (e.name == "STOP") {
      if (state_ == RunState::running) state_ = RunState::paused;
      events.push_back({MachineEvent::Kind::paused, -1, e.name});
    } else if (e.name == "RESUME") {
      // Only resume() starts this VM, and it sets the state itself: the event may be read
      // after a breakpoint stop that came later (the two arrive on different sockets).
      events.push_back({MachineEvent::Kind::resumed, -1, e.name});
    } else if (e.name == "GUEST_PANICKED") {
      state_ = RunState::panicked;
      events.push_back({MachineEvent::Kind::guest_panicked, -1, e.data.dump()});
    } else if (e.name == "RESET") {
      events.push_back({MachineEvent::Kind::reset, -1, e.data.dump()});
    } else if (e.name == "SHUTDOWN") {
      // {"guest": true, "reason": "guest-shutdown"}: the guest powered off. Anything else (a
      // signal to QEMU, a quit command) ends the VM without the guest asking.
      bool by_guest = e.data.is_object() && e.data.value("guest", false);
      if (!by_guest) exit_reason_ = "QEMU was told to stop (" + e.data.value("reason", std::string("?")) + ")";
      events.push_back({by_guest ? MachineEvent::Kind::shutdown : MachineEvent::Kind::vm_exited, -1, e.data.dump()});
    }
  }
  if (qmp_->closed() && state_ != RunState::shutdown) {
    for (int i = 0; i < 50 && !reap(false); ++i) std::this_thread::sleep_for(std::chrono::milliseconds(10));
    state_ = RunState::shutdown;
    std::string why = exit_reason_.empty() ? "QEMU ended on its own (" + exit_description_ + ")" : exit_reason_;
    events.push_back({MachineEvent::Kind::vm_exited, -1, why + "; its last words: " + tail_of(path_in(config_.runtime_dir, "qemu.log"), 3)});
  }
  return events;
}

void QemuMachine::write_native_dump(const std::string& path) {
  // Synchronous: QEMU answers when the file is complete. paging=false: physical memory as is,
  // QEMU adds its own CPU notes and, when the guest registered one, the VMCOREINFO note.
  // We open the file and hand QEMU the descriptor: QEMU may run as another user (-runas)
  // that cannot write where the operator asked.
  UniqueFd out(::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0600));
  if (!out) fail_os(ExitCode::failure, "create " + path, errno);
  qmp_->execute_passing_fd("getfd", {{"fdname", "immortal-dump"}}, out.get(), Deadline::in(std::chrono::seconds(10)));
  qmp_->execute("dump-guest-memory", {{"paging", false}, {"protocol", "fd:immortal-dump"}, {"format", "elf"}},
                Deadline::in(std::chrono::minutes(10)));
}

std::string QemuMachine::console_socket() const {
  // QEMU made it at start; a VM started before consoles were sockets logs to a file only.
  std::string path = path_in(config_.runtime_dir, "console.sock");
  struct stat st {};
  return ::stat(path.c_str(), &st) == 0 && S_ISSOCK(st.st_mode) ? path : "";
}

UniqueFd QemuMachine::connect_agent_channel(Deadline deadline) {
  return connect_unix_retry(path_in(config_.runtime_dir, "agent.sock"), deadline);
}

}  // namespace immortal::qemu
