// The supervisor's control socket (control.sock in the instance directory): how `immortal
// list/status/exec/stop` reach a running supervisor. One JSON request line per connection,
// answered by one JSON line: {"ok": true, ...} or {"ok": false, "error": "...", "exit_code": N}.
// Commands and fields are in docs/protocol.md.
#pragma once

#include "base/io.h"
#include "base/unique_fd.h"

#include <nlohmann/json.hpp>

#include <optional>
#include <string>

namespace immortal::vmm {

using nlohmann::json;

inline constexpr std::size_t kMaxControlLine = 4 << 20;

// Client side: sends request and returns the answer; turns {"ok": false} into an Error with
// the supervisor's message and exit code.
json control_call(const std::string& socket_path, const json& request, Deadline deadline);

// An exec answer as `immortal exec` reports it: the command's exit status (128 + a signal;
// ExitCode::timeout when it was killed after timeout_s; ExitCode::failure when neither is known),
// its output, and its error output followed by the supervisor's own messages. Throws
// Error(ExitCode::failure) when the output is not what the protocol says (base64).
struct ExecOutcome {
  int status = 0;
  std::string out, err;
};
ExecOutcome exec_outcome(const json& answer, int timeout_s);

// Server side: one accepted connection, reading its request line incrementally.
class ControlConnection {
 public:
  explicit ControlConnection(UniqueFd fd);
  int fd() const { return fd_.get(); }
  // Reads what is available; returns the request once complete. Throws Error for a malformed
  // or oversized request, or a peer that hung up.
  std::optional<json> on_readable();
  void reply(const json& answer);
  void reply_error(int exit_code, const std::string& message);

 private:
  void send(const json& answer);

  UniqueFd fd_;
  std::string buffer_;
};

}  // namespace immortal::vmm
