// `immortal run`: resolve the guest image and accelerator, claim the instance, supervise.
#include "accelerator.h"
#include "base/error.h"
#include "base/size.h"
#include "cli/arguments.h"
#include "cli/commands.h"
#include "instance.h"
#include "qemu/qemu_machine.h"
#include "bundle/retention.h"
#include "supervisor.h"
#include "repair/repair_image.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <iostream>

#ifndef IMMORTAL_DEFAULT_GUEST_DIR
#define IMMORTAL_DEFAULT_GUEST_DIR ""
#endif

namespace immortal::vmm {

namespace {

// The guest image built by scripts/build-guest-image: $IMMORTAL_GUEST_DIR, else the build
// directory this binary was configured with.
std::string guest_image_dir() {
  if (const char* env = std::getenv("IMMORTAL_GUEST_DIR"); env && *env) return env;
  return IMMORTAL_DEFAULT_GUEST_DIR;
}

void resolve_image(RunOptions& o) {
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

}  // namespace

int run_command(const GlobalOptions& global, const RunOptions& given) {
  RunOptions o = given;
  resolve_image(o);
  MachineConfig config;
  config.name = o.name;
  config.kernel = absolute(o.kernel);
  config.initrd = absolute(o.initrd);
  config.append = o.append.empty() ? "console=ttyS0" : o.append;
  config.memory_bytes = parse_memory_size(o.memory);
  config.vcpus = o.vcpus;
  config.qemu_binary = o.qemu;
  for (const auto* file : {&config.kernel, &config.initrd}) {
    const char* what = file == &config.kernel ? "kernel" : "initrd";
    struct stat st {};
    if (::stat(file->c_str(), &st) != 0 || ::access(file->c_str(), R_OK) != 0)
      fail(ExitCode::bad_input, "cannot read {} {}: {}", what, *file, std::strerror(errno));
    if (!S_ISREG(st.st_mode)) fail(ExitCode::bad_input, "cannot read {} {}: not a regular file", what, *file);
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

  InstanceDir dir = InstanceDir::claim(runtime_root(global.runtime_dir), o.name);
  config.runtime_dir = dir.path();
  config.console_log = o.console_log.empty() ? dir.file("console.log") : absolute(o.console_log);

  SupervisorOptions options;
  options.machine = config;
  options.accelerator = accel;
  options.hello_timeout = std::chrono::seconds(o.boot_timeout_s);
  options.echo_console = o.console;
  options.recovery.enabled = o.recovery == "on";
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
  options.repair.vm_memory = parse_memory_size(o.repair_vm_memory, "--repair-vm-memory");
  options.repair.cross_check = o.repair_cross_check;
  options.repair.agent = o.repair_agent.empty() ? "" : absolute(o.repair_agent);
  if (options.recovery.enabled) {
    // Fail now, not at the first crash, when the agent is missing.
    std::string agent = find_repair_agent(options.repair.agent);
    std::cerr << "immortal: repair " << o.repair << " (agent " << agent << ", fallback " << o.repair_fallback << ")\n";
  }
  options.event_log = absolute(o.event_log);
  {
    std::string bundle_dir = o.bundle_dir;
    if (bundle_dir.empty()) {
      // $IMMORTAL_BUNDLE_DIR, else kdump's neighbourhood for root, else the user's state dir.
      const char* env = std::getenv("IMMORTAL_BUNDLE_DIR");
      const char* state = std::getenv("XDG_STATE_HOME");
      const char* home = std::getenv("HOME");
      std::string root = env && *env               ? env
                         : ::geteuid() == 0         ? "/var/crash/immortal"
                         : state && *state          ? std::string(state) + "/immortal/bundles"
                         : std::string(home && *home ? home : "/tmp") + "/.local/state/immortal/bundles";
      bundle_dir = root + "/" + o.name;
    }
    options.bundles.dir = absolute(bundle_dir);
    options.bundles.retention = {static_cast<std::uint64_t>(o.bundle_keep), parse_size(o.bundle_max_size, "--bundle-max-size")};
    options.bundles.archive = o.bundle_compress;
    options.bundles.filter = o.bundle_memory == "kernel";
    std::error_code ec;
    std::filesystem::create_directories(options.bundles.dir, ec);
    if (ec || ::access(options.bundles.dir.c_str(), W_OK) != 0)
      fail(ExitCode::bad_input, "cannot write bundles to {}: {} (choose another with --bundle-dir)", options.bundles.dir,
           ec ? ec.message() : std::strerror(errno));
  }

  Detacher detacher;
  if (o.detach) {
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
    int out = ::open(log.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
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

  Supervisor supervisor(options, std::move(dir), [](const MachineConfig& c, Deadline d) {
    return std::unique_ptr<Machine>(qemu::QemuMachine::launch(c, d));
  });
  try {
    return supervisor.run();
  } catch (const Error& e) {
    detacher.report(fmt::format("ERR {} {}", e.exit_code(), e.what()));
    throw;
  }
}

}  // namespace immortal::vmm
