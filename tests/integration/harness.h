// Helpers for integration tests: running the real `immortal` binary, finding QEMU processes,
// building hostile guest images from the real one.
#pragma once

#include <chrono>
#include <functional>
#include <string>
#include <vector>

#include <sys/types.h>

namespace immortal::test {

void prepare_environment();  // sets IMMORTAL_RUNTIME_DIR and IMMORTAL_BUNDLE_DIR to a fresh directory
void cleanup_environment();
// Prints and counts ASan/LSan/UBSan reports in the supervisors' logs of this run.
int sanitizer_findings();
std::string test_runtime_root();
// The control socket of the instance `name` in that directory.
std::string control_socket_of(const std::string& name);
std::string guest_dir();     // $IMMORTAL_GUEST_DIR (scripts/test sets it)
std::string scratch_dir();   // a temporary directory for this run
std::string unique_name(const std::string& prefix);

struct CommandResult {
  int status = -1;  // exit status, or 128 + signal
  std::string out, err;
};
// Runs `immortal ARGS...` and waits for it, killing it after timeout (then status is -1).
CommandResult run_cli(const std::vector<std::string>& args,
                       std::chrono::seconds timeout = std::chrono::seconds(120));

// Starts `immortal ARGS...` without waiting; stdout/stderr go to files in scratch_dir().
pid_t spawn_immortal(const std::vector<std::string>& args, const std::string& output_file);

// QEMU processes started for an instance (by their "-name NAME,process=immortal-NAME").
std::vector<pid_t> qemu_processes(const std::string& instance);
bool process_alive(pid_t pid);
bool wait_until(const std::function<bool()>& condition, std::chrono::milliseconds timeout);

// The guest image's initrd with /sbin/immortal-agent replaced by a shell script.
std::string initrd_with_agent_script(const std::string& script);

std::string read_file(const std::string& path);
// The lines of `expected` a guest console does not show in order after the last announcement of
// an injection of `fault_class` ("injects CLASS", written by /sbin/immortal-victim); that
// announcement itself when it is not there. Empty: all shown, in order.
std::vector<std::string> missing_after_injection(const std::string& console, const std::string& fault_class,
                                                 const std::vector<std::string>& expected);
// The lines of a text, without their newlines.
std::vector<std::string> lines_of(const std::string& text);
// Runs a shell command line on the host; its standard output.
std::string run_shell(const std::string& command);
// A TCP port on 127.0.0.1 that nothing listens on now (for a forwarded guest port).
int free_port();
// One HTTP/1.0 GET from 127.0.0.1:port; the whole response, or "" when nothing answered in time.
std::string http_get(int port, const std::string& path, std::chrono::seconds timeout);
// `immortal exec NAME -- sh -c SCRIPT`: a shell command line in the guest (the CLI's request and
// result, made from this process).
CommandResult guest_sh(const std::string& name, const std::string& script,
                       std::chrono::seconds timeout = std::chrono::seconds(60));
// `immortal inject NAME CLASS` (must succeed); the victim's pid in the guest (0 when the guest
// crashed before its agent could report it).
int inject(const std::string& name, const std::string& cls);

}  // namespace immortal::test
