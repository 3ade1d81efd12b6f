// The inline repair process's sandbox, entered before it parses anything it was given (the
// guest's profile, BTF, the healthy copy, guest memory): from then on it may compute, read and
// write the descriptors it holds, allocate memory within its limit and sleep. As root it first
// becomes nobody (uid and gid 65534, no supplementary groups); then RLIMIT_AS, RLIMIT_FSIZE,
// no core files, at most 16 descriptors, no new privileges, and a seccomp filter: no socket,
// no exec, no executable memory, signals only to itself, mremap only within its own mappings.
// Files can be opened read-only only, and only because libbpf 1.1 parses split (module) BTF
// from a path alone (its btf__new_split is declared but not built): the module BTF bytes are
// handed to it through memfds it makes itself. Any other system call kills the process
// (SECCOMP_RET_KILL_PROCESS), which the supervisor sees. docs/architecture.md, "Sandboxes".
#pragma once

#include <sys/types.h>

#include <cstdint>

namespace immortal::repair {

struct SandboxLimits {
  std::uint64_t address_space = 0;     // RLIMIT_AS; 0: none (the repair VM's own agent)
  std::uint64_t file_size = 16 << 20;  // RLIMIT_FSIZE: its log
};

// Throws std::runtime_error if the process cannot be confined as asked.
void enter_sandbox(const SandboxLimits& limits);

// Becomes nobody (uid and gid 65534, no supplementary groups): what the process analysing a crash
// in the repair VM does once it has mapped that crash's windows, whose kernel has no seccomp.
// Nobody cannot open the VM's PCI windows (sysfs resource files are root's), so it cannot reach
// the other snapshot arena, which may hold another guest's pages. Throws std::runtime_error.
void drop_root();
// The same to another account (a slot of a shared repair VM: each slot's processes have their own,
// so that none can open another slot's windows, nor trace or signal its processes).
void drop_root_to(uid_t id);

// Whether the canary is asked for (IMMORTAL_SANDBOX_CANARY=1 in the environment: the supervisor's,
// or the repair VM's kernel command line).
bool sandbox_canary_set();

// The sandbox's proof for the one-shot modes (--report, --introspect), as in --inline: with
// IMMORTAL_SANDBOX_CANARY=1 it calls socket(), which must kill the process (SIGSYS). Returns
// false (having said so) when the call came back: the sandbox is broken.
bool sandbox_canary_died();

// The process's address space now (VmSize), for a limit above what it has mapped already.
std::uint64_t address_space_in_use();

}  // namespace immortal::repair
