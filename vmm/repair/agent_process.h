// Starting a repair agent process (inline or report mode) the same way every time: its own
// process group, killed with the supervisor (PR_SET_PDEATHSIG), no blocked signals inherited, and
// exactly the descriptors it is given, at the numbers it expects; nothing else crosses exec.
#pragma once

#include "base/unique_fd.h"
#include "machine.h"

#include <sys/types.h>

#include <nlohmann/json.hpp>

#include <string>
#include <vector>

namespace immortal::vmm {

// Forks and execs args[0] with args. fds[i] becomes descriptor i in the child (-1: /dev/null);
// every other descriptor is closed. Returns the child's pid; throws Error when fork fails. The
// child exits 127 when args[0] cannot be run.
pid_t start_agent_process(const std::vector<std::string>& args, const std::vector<int>& fds);

// A new, read-only open file description of fd (through /proc/self/fd): what an agent or a
// second QEMU is given of guest RAM or a snapshot cannot be mapped writable. Invalid (errno
// set) when it cannot be opened.
UniqueFd reopen_read_only(int fd);

// A doorbell: a connected pair of stream sockets, ours and the agent's. Throws Error.
struct Doorbell {
  UniqueFd ours, theirs;
};
Doorbell make_doorbell();

// A sealed memfd holding data (an agent's request, an index): it can read it, not change it.
// Throws Error.
UniqueFd sealed_memfd_with(const std::string& name, const std::string& data);

// How an agent process ended, from its wait status, for a message that begins with its name:
// "" (it exited 0), "made a system call its sandbox forbids" (SIGSYS: seccomp killed it), "was
// killed by signal N", "cannot be run" (exit 127, from start_agent_process's child) or "failed
// (exit status N)".
std::string agent_ending(int wait_status);

// Why an agent the supervisor gave up on (and killed) failed: why, then "(it made a system
// call its sandbox forbids)" when its sandbox had killed it first, else its last log line.
std::string agent_failure(const std::string& why, int wait_status, int log_fd);

// Guest RAM's layout for an agent's request or configuration: {"ram_size", "ram":
// [{"guest_physical", "file_offset", "size"}]} (the agent maps it with map_request_ram).
nlohmann::json ram_layout_json(const Machine::RamFile& ram);

// An agent's log: a memfd it writes under its RLIMIT_FSIZE. Throws Error.
UniqueFd agent_log_memfd(const std::string& name);
// The last line of such a log (at most 512 bytes of it), escaped for a terminal.
std::string last_log_line(int log_fd);

}  // namespace immortal::vmm
