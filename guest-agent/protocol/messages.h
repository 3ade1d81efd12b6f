// The messages of the agent protocol (docs/protocol.md), as typed structs. parse_*() turn an
// untrusted JSON payload into a struct or throw ProtocolError naming the bad field; to_payload()
// turns a struct into its JSON payload.
#pragma once

#include "protocol/frame.h"

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace immortal::agent {

// Bounds on what a peer may send, checked on parse.
inline constexpr std::size_t kMaxArgs = 256;
inline constexpr std::size_t kMaxOutput = 256 * 1024;  // per stream of an exec result
inline constexpr std::size_t kMaxText = 4096;          // any other string field

struct Hello {
  std::uint32_t protocol = kProtocolVersion;
  std::string agent_version;
  std::string kernel_release;
  std::string boot_id;
  std::uint64_t uptime_ms = 0;
  std::string hostname;
  std::uint64_t modules_generation = 0;  // as in heartbeats (optional field)
};

struct Heartbeat {
  std::uint64_t seq = 0;
  std::uint64_t uptime_ms = 0;
  std::uint64_t modules_generation = 0;  // changes when /proc/modules changes (optional field)
  std::uint64_t serial_rearmed = 0;      // stalled serial ports re-armed since the agent started (optional)
};

struct Ping {
  std::uint64_t id = 0;
};

struct ExecRequest {
  std::uint64_t id = 0;
  std::vector<std::string> argv;
  std::uint32_t timeout_ms = 60'000;
};

struct ExecResult {
  std::uint64_t id = 0;
  std::optional<int> exit_code;  // set when the command exited
  std::optional<int> signal;     // set when it was killed by a signal
  std::string stdout_data, stderr_data;
  bool truncated = false;        // output beyond kMaxOutput was dropped
  bool timed_out = false;        // killed after timeout_ms
  std::string error;             // could not be started (then exit_code is 127)
};

// spawn: like exec, but the agent answers as soon as the command started. Its output goes to
// the guest's console; the agent reaps it. Used for processes that may never finish (a fault
// injection victim).
struct SpawnRequest {
  std::uint64_t id = 0;
  std::vector<std::string> argv;
};

struct Spawned {
  std::uint64_t id = 0;
  std::int32_t pid = 0;  // 0 when it could not be started
  std::string error;
};

// read_file: up to kMaxChunk bytes of a guest file from an offset (lseek works on the seq_file
// files of /proc too). eof is set when the chunk ends the file.
inline constexpr std::size_t kMaxChunk = 512 * 1024;

struct ReadFileRequest {
  std::uint64_t id = 0;
  std::string path;
  std::uint64_t offset = 0;
  std::uint32_t length = 0;
};

struct FileData {
  std::uint64_t id = 0;
  std::string data;
  bool eof = false;
  std::string error;  // set when the file cannot be read (then data is empty)
};

struct ErrorMessage {
  std::optional<std::uint64_t> id;
  std::string message;
};

std::string to_payload(const Hello&);
std::string to_payload(const Heartbeat&);
std::string to_payload(const Ping&);  // also the pong payload
std::string to_payload(const ExecRequest&);
std::string to_payload(const ExecResult&);
std::string to_payload(const ErrorMessage&);
std::string to_payload(const SpawnRequest&);
std::string to_payload(const Spawned&);
std::string to_payload(const ReadFileRequest&);
std::string to_payload(const FileData&);

Hello parse_hello(const std::string& payload);
Heartbeat parse_heartbeat(const std::string& payload);
Ping parse_ping(const std::string& payload);
ExecRequest parse_exec_request(const std::string& payload);
ExecResult parse_exec_result(const std::string& payload);
ErrorMessage parse_error(const std::string& payload);
SpawnRequest parse_spawn_request(const std::string& payload);
Spawned parse_spawned(const std::string& payload);
ReadFileRequest parse_read_file(const std::string& payload);
FileData parse_file_data(const std::string& payload);

// The "id" of a request that could not be parsed, when it has a usable one: the error answer
// then reaches whoever waits for it, instead of leaving it to its timeout.
std::optional<std::uint64_t> request_id_of(const std::string& payload) noexcept;
// Throws ProtocolError when argv would be refused by the other side (what get_argv checks):
// the sender says so at once.
void check_argv(const std::vector<std::string>& argv);

}  // namespace immortal::agent
