// Small I/O helpers of the agent's one-shot and long-lived modes (--report, --classify): whole
// descriptors read with a size limit, whole answers written, lines for the supervisor's log.
#pragma once

#include <cstddef>
#include <string>

namespace immortal::repair {

// All of a descriptor (a memfd or a pipe), at most limit bytes; Error(bad_input) beyond.
std::string read_all(int fd, std::size_t limit, const char* what);
// All of data to fd; Error when it cannot.
void write_all(int fd, const std::string& data);
// "immortal-repair-agent: LINE" on standard error (the supervisor keeps it).
void agent_say(const std::string& line);

}  // namespace immortal::repair
