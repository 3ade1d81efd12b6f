// Small I/O helpers of the agent's one-shot and long-lived modes (--report, --classify,
// --introspect): whole descriptors read with a size limit, whole answers written, lines for the
// supervisor's log, doorbell bytes, and the guest-RAM layout of a request.
#pragma once

#include "memory/shared_ram.h"

#include <nlohmann/json.hpp>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

namespace immortal::repair {

// All of a descriptor (a memfd or a pipe), at most limit bytes; Error(bad_input) beyond.
std::string read_all(int fd, std::size_t limit, const char* what);
// All of data to fd; Error when it cannot.
void write_all(int fd, const std::string& data);
// "immortal-repair-agent: LINE" on standard error (the supervisor keeps it).
void agent_say(const std::string& line);
// One byte from a doorbell; 0 when the supervisor closed it (or it failed).
char doorbell_byte(int fd);

// A request's unsigned number key; Error(bad_input) when it is missing or not one.
std::uint64_t request_number(const nlohmann::json& request, const char* key);
// Guest RAM as the request lays it out ("ram_size", "ram": [{"guest_physical", "file_offset",
// "size"}], the supervisor's ram_layout_json), mapped read-only from fd.
std::unique_ptr<SharedRamMemory> map_request_ram(const nlohmann::json& request, int fd);

}  // namespace immortal::repair
