// `immortal run`: resolve the guest image and accelerator, claim the instance, supervise.
#include "accelerator.h"
#include "base/error.h"
#include "base/private_dir.h"
#include "base/size.h"
#include "cli/arguments.h"
#include "cli/commands.h"
#include "cli/device_options.h"
#include "cli/run_options_json.h"
#include "instance.h"
#include "control/control_channel.h"
#include "instance_state.h"
#include "libvirt/libvirt_connection.h"
#include "libvirt/libvirt_machine.h"
#include "machine_backends.h"
#include "bundle/retention.h"
#include "supervisor.h"
#include "upgrade.h"
#include "repair/repair_image.h"

#include <fcntl.h>
#include <pwd.h>
#include <sys/stat.h>
#include <unistd.h>

#include <csignal>
#include <cstdlib>
#include <filesystem>
#include <iostream>
#include <set>

#ifndef IMMORTAL_DEFAULT_GUEST_DIR
#define IMMORTAL_DEFAULT_GUEST_DIR ""
#endif

namespace immortal::vmm {

namespace {

void resolve_image(RunOptions& o) {
  if (!o.disks.empty()) {
    // The operator's own VM: its kernel is the one on its disk (firmware boot), or the one named.
    if (o.kernel.empty() && !o.initrd.empty())
      fail(ExitCode::usage, "--initrd needs --kernel (without them the guest boots from its first --disk)");
    if (o.kernel.empty() && !o.append.empty())
      fail(ExitCode::usage, "--append needs --kernel (without them the guest boots from its first --disk)");
    return;
  }
  if (!o.kernel.empty() && !o.initrd.empty()) return;
  std::string dir = guest_image_dir();
  std::string kernel = dir + "/vmlinuz", initrd = dir + "/initrd.img";
  if (o.kernel.empty()) {
    if (dir.empty() || ::access(kernel.c_str(), R_OK) != 0)
      fail(ExitCode::bad_input, "no guest image in \"{}\": run scripts/build-guest-image, or pass --kernel and --initrd",
           dir);
    o.kernel = kernel;
  }
  if (o.initrd.empty()) {
    if (dir.empty() || ::access(initrd.c_str(), R_OK) != 0)
      fail(ExitCode::bad_input, "no initrd in \"{}\": run scripts/build-guest-image, or pass --initrd", dir);
    o.initrd = initrd;
  }
}

std::string absolute(const std::string& path) {
  if (path.empty() || path[0] == '/') return path;
  char cwd[4096];
  if (!::getcwd(cwd, sizeof cwd)) return path;
  return std::string(cwd) + "/" + path;
}

// --detach: the parent waits on a pipe until the supervisor says the guest is up (or why not).
struct Detacher {
  int write_fd = -1;
  void report(const std::string& line) {
    if (write_fd < 0) return;
    std::string msg = line + "\n";
    (void)!::write(write_fd, msg.data(), msg.size());
    ::close(write_fd);
    write_fd = -1;
  }
};

[[noreturn]] void parent_waits(int read_fd, pid_t child) {
  std::string message;
  char buf[4096];
  ssize_t n;
  while ((n = ::read(read_fd, buf, sizeof buf)) > 0) message.append(buf, static_cast<std::size_t>(n));
  if (message.rfind("OK ", 0) == 0) {
    std::cout << message.substr(3);
    std::cout.flush();
    ::_exit(0);
  }
  if (message.rfind("ERR ", 0) == 0) {
    // "ERR <code> <message>"
    auto space = message.find(' ', 4);
    int code = std::atoi(message.substr(4, space - 4).c_str());
    std::cerr << "immortal: " << message.substr(space + 1);
    ::_exit(code > 0 ? code : 1);
  }
  std::cerr << "immortal: the supervisor (pid " << child << ") died while starting\n";
  ::_exit(1);
}

// $IMMORTAL_BUNDLE_DIR, else kdump's neighbourhood for root, else the user's state dir; then NAME.
std::string default_bundle_dir(const std::string& name) {
  const char* env = std::getenv("IMMORTAL_BUNDLE_DIR");
  const char* state = std::getenv("XDG_STATE_HOME");
  const char* home = std::getenv("HOME");
  std::string bundles = env && *env        ? env
                        : ::geteuid() == 0 ? "/var/crash/immortal"
                        : state && *state  ? std::string(state) + "/immortal/bundles"
                                           : std::string(home && *home ? home : "/tmp") + "/.local/state/immortal/bundles";
  return bundles + "/" + name;
}

// Everything the supervisor is told, from the options (paths already absolute).
SupervisorOptions supervisor_options(const RunOptions& o, const MachineConfig& config, const AcceleratorChoice& accel) {
  SupervisorOptions options;
  options.machine = config;
  options.accelerator = accel;
  options.hello_timeout = std::chrono::seconds(o.boot_timeout_s);
  options.echo_console = o.console;
  options.recovery.enabled = o.recovery == "on";
  options.recovery.reboot_when_off = o.on_crash == "reboot";
  for (const auto& k : o.no_recover) options.recovery.disabled_kinds.insert(k);
  if (!o.recovery_limit.empty()) options.recovery.set_limit(o.recovery_limit);
  options.recovery.hang_timeout = std::chrono::seconds(o.hang_timeout_s);
  options.recovery.boot_timeout = std::chrono::seconds(o.boot_timeout_s);
  options.recovery.verify_timeout = std::chrono::seconds(o.verify_timeout_s);
  options.recovery.verify_window = std::chrono::seconds(o.verify_window_s);
  options.recovery.quarantine_driver = o.quarantine == "driver";
  options.repair.mode = o.repair;
  options.repair.fallback = o.repair_fallback;
  options.repair.timeout = std::chrono::milliseconds(o.repair_timeout_ms);
  options.repair.vm_memory = o.repair_vm_memory == "auto" ? 0 : parse_memory_size(o.repair_vm_memory, "--repair-vm-memory");
  options.repair.cross_check = o.repair_cross_check;
  options.repair.vm_shared = o.repair_vm_shared;
  options.repair.agent = o.repair_agent;
  options.repair.vm_kernel = absolute(o.repair_vm_kernel);
  // The kernel built for the repair VM alone when there is one (a few MiB of memory where a
  // distribution kernel holds tens), else the guest's own.
  if (options.repair.vm_kernel.empty() && options.recovery.enabled) options.repair.vm_kernel = find_repair_kernel();
  if (options.repair.vm_kernel.empty() && o.kernel.empty()) {
    // A guest booted by its firmware: the repair VM runs the built guest image's kernel.
    std::string image_kernel = guest_image_dir() + "/vmlinuz";
    if (!guest_image_dir().empty() && ::access(image_kernel.c_str(), R_OK) == 0) {
      options.repair.vm_kernel = image_kernel;
    } else if (options.recovery.enabled && options.repair.mode == "vm") {
      options.repair.mode = "inline";
      std::cerr << "immortal: no kernel for the repair VM (the guest boots from its disk and there is no built guest "
                   "image): crashes are analysed inline; name one with --repair-vm-kernel\n";
    }
  }
  if (!options.repair.vm_kernel.empty() && ::access(options.repair.vm_kernel.c_str(), R_OK) != 0)
    fail(ExitCode::bad_input, "cannot read the repair VM's kernel {}: {}", options.repair.vm_kernel, std::strerror(errno));
  if (options.recovery.enabled) {
    // Fail now, not at the first crash, when the agent is missing.
    std::string agent = find_repair_agent(options.repair.agent);
    std::cerr << "immortal: repair " << options.repair.mode << " (agent " << agent << ", fallback " << o.repair_fallback;
    if (options.repair.mode == "vm")
      std::cerr << ", VM kernel " << (options.repair.vm_kernel.empty() ? o.kernel + " (the guest's)" : options.repair.vm_kernel);
    std::cerr << ")\n";
  }
  options.event_log = o.event_log;
  if (!o.metrics_listen.empty()) parse_listen_address(o.metrics_listen);  // a typo fails now, not in the supervisor
  options.metrics_listen = o.metrics_listen;
  options.on_event = o.on_event;
  options.bundles.dir = o.bundle_dir;
  options.bundles.retention = {static_cast<std::uint64_t>(o.bundle_keep), parse_size(o.bundle_max_size, "--bundle-max-size")};
  options.bundles.archive = o.bundle_compress;
  options.bundles.filter = o.bundle_memory == "kernel";
  try {
    ensure_private_directory(options.bundles.dir, "the bundle directory");
  } catch (const Error& e) {
    fail(ExitCode::bad_input, "cannot write bundles to {}: {} (choose another with --bundle-dir)", options.bundles.dir,
         e.what());
  }
  options.settings = o;
  return options;
}

// Runs the supervisor, in the foreground or (detach) as a daemon whose parent returns once the
// guest is up.
int supervise(SupervisorOptions options, InstanceDir dir, bool detach, const MachineBackend& backend) {
  Detacher detacher;
  if (detach) {
    int fds[2];
    if (::pipe2(fds, O_CLOEXEC) != 0) fail_os(ExitCode::failure, "pipe", errno);
    std::cout.flush();
    pid_t pid = ::fork();
    if (pid < 0) fail_os(ExitCode::failure, "fork", errno);
    if (pid > 0) {
      ::close(fds[1]);
      parent_waits(fds[0], pid);  // never returns; the child owns the instance from here
    }
    ::close(fds[0]);
    ::setsid();
    std::string log = dir.file("supervisor.log");
    int null = ::open("/dev/null", O_RDONLY);
    int out = ::open(log.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
    ::dup2(null, 0);
    if (out >= 0) {
      ::dup2(out, 1);
      ::dup2(out, 2);
    }
    detacher.write_fd = fds[1];
    options.echo_console = false;
    options.on_ready = [&detacher, name = dir.name()](const std::string& summary) {
      detacher.report("OK " + summary + "\nimmortal: manage it with: immortal status|exec|stop " + name);
    };
  }
  Supervisor supervisor(options, std::move(dir), backend);
  try {
    return supervisor.run();
  } catch (const Error& e) {
    detacher.report(fmt::format("ERR {} {}", e.exit_code(), e.what()));
    throw;
  }
}

}  // namespace

std::string guest_image_dir() {
  if (const char* env = std::getenv("IMMORTAL_GUEST_DIR"); env && *env) return env;
  return IMMORTAL_DEFAULT_GUEST_DIR;
}

RunOptions checked_run_options(const RunOptions& given) {
  check_instance_name(given.name);
  RunOptions o = given;
  machine_backend(o.backend);  // one this build has
  resolve_image(o);
  o.kernel = absolute(o.kernel);
  o.initrd = absolute(o.initrd);
  o.repair_agent = o.repair_agent.empty() ? "" : absolute(o.repair_agent);
  o.repair_vm_kernel = absolute(o.repair_vm_kernel);
  o.event_log = absolute(o.event_log);
  o.bundle_dir = absolute(o.bundle_dir);
  o.console_log = absolute(o.console_log);
  parse_memory_size(o.memory);
  if (!o.metrics_listen.empty()) parse_listen_address(o.metrics_listen);
  std::vector<std::string> disks;
  for (const auto& spec : o.disks) {
    DiskConfig disk = parse_disk_option(spec);
    check_disk(disk);
    disks.push_back(describe(disk));  // absolute paths and formats, for state.json and definitions
  }
  o.disks = disks;
  for (const auto& spec : o.nets) parse_net_option(spec);
  std::vector<std::string> channels;
  std::set<std::string> port_names;
  for (const auto& spec : o.channels) {
    ChannelConfig channel = parse_channel_option(spec);
    check_channel(channel);
    if (!port_names.insert(channel.name).second)
      fail(ExitCode::usage, "--channel {}: a second port named {}", spec, channel.name);
    channels.push_back(describe(channel));
  }
  o.channels = channels;
  for (const auto* file : {&o.kernel, &o.initrd}) {
    if (file->empty()) continue;  // firmware boot, or a kernel without initrd
    const char* what = file == &o.kernel ? "kernel" : "initrd";
    struct stat st {};
    if (::stat(file->c_str(), &st) != 0 || ::access(file->c_str(), R_OK) != 0)
      fail(ExitCode::bad_input, "cannot read {} {}: {}", what, *file, std::strerror(errno));
    if (!S_ISREG(st.st_mode)) fail(ExitCode::bad_input, "cannot read {} {}: not a regular file", what, *file);
  }
  return o;
}

int run_command(const GlobalOptions& global, const RunOptions& given) {
  std::string root = runtime_root(global.runtime_dir);
  check_instance_name(given.name);
  // A guest that outlived its supervisor (a restart, a SIGKILL) is taken over, not booted again.
  if (auto left = orphaned_instance(root, given.name)) {
    std::cerr << "immortal: instance \"" << given.name << "\" is alive without a supervisor: attaching to it\n";
    return attach_command(global, given.name, given.detach);
  }
  RunOptions o = checked_run_options(given);
  const MachineBackend& backend = machine_backend(o.backend);
  if (o.bundle_dir.empty()) o.bundle_dir = default_bundle_dir(o.name);
  MachineConfig config;
  config.name = o.name;
  config.kernel = o.kernel;
  config.initrd = o.initrd;
  config.append = config.kernel.empty() ? "" : o.append.empty() ? "console=ttyS0" : o.append;
  config.memory_bytes = parse_memory_size(o.memory);
  config.vcpus = o.vcpus;
  config.backend_options["binary"] = o.qemu;  // the qemu backend's; others ignore it
  // Started by root, QEMU gives up root once its devices are open (an escape from the guest
  // into QEMU then lands in an account that owns nothing).
  std::string qemu_user = o.qemu_user.empty() ? "nobody" : o.qemu_user;
  if (!::getpwnam(qemu_user.c_str())) fail(ExitCode::usage, "--qemu-user {}: no such user on this host", qemu_user);
  if (::geteuid() == 0 && qemu_user != "root") config.backend_options["user"] = qemu_user;
  for (const auto& spec : o.disks) config.disks.push_back(parse_disk_option(spec));
  for (const auto& spec : o.channels) config.channels.push_back(parse_channel_option(spec));
  for (const auto& spec : o.nets) {
    NetConfig net = parse_net_option(spec);
    net.mac = instance_mac(o.name, config.nets.size());
    config.nets.push_back(net);
  }

  AcceleratorChoice accel;
  if (o.accel == "auto") {
    accel = choose_accelerator();
  } else {
    accel.accelerator = o.accel == "kvm" ? Accelerator::kvm : Accelerator::tcg;
    accel.reason = "chosen with --accel";
  }
  config.accelerator = accel.accelerator;
  std::cerr << "immortal: accelerator " << to_string(accel.accelerator) << ": " << accel.reason << "\n";

  InstanceDir dir = InstanceDir::claim(root, o.name);
  config.runtime_dir = dir.path();
  config.console_log = o.console_log.empty() ? dir.file("console.log") : absolute(o.console_log);
  o.console_log = config.console_log;
  ::unlink(dir.file("state.json").c_str());  // an earlier instance's, whose VM is gone
  return supervise(supervisor_options(o, config, accel), std::move(dir), given.detach, backend);
}

int attach_command(const GlobalOptions& global, const std::string& name, bool detach) {
  std::string root = runtime_root(global.runtime_dir);
  check_instance_name(name);
  InstanceDir dir = InstanceDir::claim(root, name);  // fails while a supervisor runs it
  auto state = InstanceState::load(dir.file("state.json"));
  if (!state)
    fail(ExitCode::failure, "instance \"{}\" has no VM to attach to (no state.json in {}): start one with immortal run",
         name, dir.path());
  RunOptions o;
  try {
    o = state->settings.get<RunOptions>();
  } catch (const std::exception& e) {
    fail(ExitCode::bad_input, "the instance's saved settings are damaged: {}", e.what());
  }
  const MachineBackend& backend = machine_backend(state->backend);
  AcceleratorChoice accel{state->machine.accelerator, "as the VM was started"};
  SupervisorOptions options = supervisor_options(o, state->machine, accel);
  options.take_over = state;
  return supervise(std::move(options), std::move(dir), detach, backend);
}

int attach_libvirt_command(const GlobalOptions& global, const std::string& domain_name, const std::string& uri,
                           const std::string& instance, const RunOptions& protection, bool detach) {
  std::string root = runtime_root(global.runtime_dir);
  MachineConfig config;
  nlohmann::json handle;
  {
    // Only a look-up here: the supervisor (after --detach's fork) opens its own connection.
    LibvirtConnection connection(uri);
    LibvirtDomain domain = connection.domain(domain_name);
    if (!domain.active()) fail(ExitCode::failure, "libvirt domain {} is not running (virsh start {})", domain.name(), domain.name());
    handle = libvirt_handle(connection.uri(), domain.uuid(), domain.name());
    config.name = instance.empty() ? domain.name() : instance;
    auto size = domain.size();
    config.memory_bytes = size.memory_bytes;
    config.vcpus = size.vcpus;
  }
  try {
    check_instance_name(config.name);
  } catch (const Error& e) {
    fail(ExitCode::usage, "{} (choose the instance's name with --name)", e.what());
  }
  // Two supervisors on one domain would both handle its crashes (an `immortal daemon` attaches
  // prepared domains as they start, under the domain's name).
  for (const auto& other : running_instances(root)) {
    if (other == config.name) continue;
    std::optional<InstanceState> state;
    try {
      state = InstanceState::load(root + "/" + other + "/state.json");
    } catch (const std::exception&) {
      continue;  // another VM's damaged state: not ours to judge here
    }
    if (state && state->backend == "libvirt" && state->vm.is_object() && state->vm.value("uuid", "") == handle["uuid"])
      fail(ExitCode::usage, "libvirt domain {} is already protected by instance \"{}\" (immortal stop {} lets it go)",
           handle.value("name", domain_name), other, other);
  }
  InstanceDir dir = InstanceDir::claim(root, config.name);  // fails while a supervisor runs it
  auto saved = InstanceState::load(dir.file("state.json"));
  if (saved && (saved->backend != "libvirt" || saved->vm.value("uuid", "") != handle["uuid"]))
    fail(ExitCode::usage, "instance \"{}\" is another VM's (its state is in {}): choose another name with --name",
         config.name, dir.path());
  RunOptions o = protection;
  o.name = config.name;
  o.backend = "libvirt";
  o.repair_agent = o.repair_agent.empty() ? "" : absolute(o.repair_agent);
  o.event_log = absolute(o.event_log);
  o.bundle_dir = o.bundle_dir.empty() ? default_bundle_dir(o.name) : absolute(o.bundle_dir);
  // The domain runs as libvirt made it; only helper VMs (the repair VM) are ours to accelerate.
  AcceleratorChoice accel = choose_accelerator();
  config.accelerator = accel.accelerator;
  std::cerr << "immortal: repair VM accelerator " << to_string(accel.accelerator) << ": " << accel.reason << "\n";
  config.runtime_dir = dir.path();
  InstanceState state = saved ? *saved : InstanceState{};  // attached before: its crash history goes on
  state.backend = "libvirt";
  state.vm = handle;
  state.machine = config;
  SupervisorOptions options = supervisor_options(o, config, accel);
  state.settings = options.settings;
  options.take_over = state;
  return supervise(std::move(options), std::move(dir), detach, machine_backend("libvirt"));
}

int upgrade_command(const GlobalOptions& global, const std::string& name, const std::string& binary, int timeout_s) {
  std::string root = runtime_root(global.runtime_dir);
  check_instance_name(name);
  std::string path = binary.empty() ? std::filesystem::read_symlink("/proc/self/exe").string() : absolute(binary);
  if (::access(path.c_str(), X_OK) != 0) fail(ExitCode::usage, "cannot execute {}: {}", path, std::strerror(errno));
  if (!instance_running(root, name)) fail(ExitCode::failure, "no running instance named \"{}\"", name);
  std::cerr << "immortal: handing \"" << name << "\" to " << path << " (the guest runs on meanwhile)\n";
  json answer = control_call(root + "/" + name + "/control.sock",
                             {{"command", "upgrade"}, {"binary", path}, {"timeout_s", timeout_s}},
                             Deadline::in(std::chrono::seconds(timeout_s + 60)));
  if (answer.value("upgraded", false)) {
    // The old supervisor stops after its answer: wait for it, so that "upgraded" means the old
    // binary no longer runs (an operator may remove it next).
    int previous = answer.value("previous_supervisor_pid", 0);
    if (!wait_for_exit(previous, std::chrono::seconds(60)))
      std::cerr << "immortal: the old supervisor (pid " << previous << ") has not exited yet; the new one holds the instance\n";
    std::cout << "upgraded: " << answer.value("detail", "") << "\n";
    return 0;
  }
  std::cerr << "immortal: upgrade rolled back (the old supervisor, pid " << answer.value("supervisor_pid", 0)
            << ", keeps the instance): " << answer.value("detail", "") << "\n";
  return static_cast<int>(ExitCode::failure);
}

}  // namespace immortal::vmm
