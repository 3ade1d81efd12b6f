// The inline repair process's sandbox: once the agent has loaded its inputs it may compute, read
// and write the descriptors it holds, allocate memory and sleep — nothing else. No file can be
// opened, no socket made (no network), nothing executed, no memory made executable; any other
// system call kills the process (SECCOMP_RET_KILL_PROCESS), which the supervisor sees.
#pragma once

namespace immortal::repair {

// Throws std::runtime_error if the filter cannot be installed.
void enter_sandbox();

}  // namespace immortal::repair
