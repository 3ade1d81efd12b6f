// The guest shell commands of a campaign's `fault-inject` source: the kernel's fault-injection
// framework (Documentation/fault-injection/fault-injection.rst) configured through debugfs for
// one injection, its trigger run marked make-it-fail, and the framework reset afterwards.
#pragma once

#include <string>

namespace immortal::vmm {

struct FaultSpec;
struct Injection;

// A string as one word of a POSIX shell command.
std::string shell_quote(const std::string& s);

// Where the framework's files are; other roots only for tests on a host without the framework.
struct FaultInjectPaths {
  std::string debugfs = "/sys/kernel/debug";
  std::string proc_self = "/proc/self";
};

// Configures the kind's attribute directory to fail `times` calls with `probability` percent
// in the tasks marked make-it-fail only (task-filter), then starts the trigger, marked, in the
// background. Exits 3 when the kernel lacks the kind, 4 when fail_function refuses the function.
std::string fault_inject_script(const FaultSpec& f, const Injection& inj, const FaultInjectPaths& paths = {});
// Stops the kind failing (and empties fail_function's list); quiet without the framework.
std::string fault_inject_cleanup(const Injection& inj, const FaultInjectPaths& paths = {});

}  // namespace immortal::vmm
