// A client of the QEMU Machine Protocol (QMP) over its UNIX socket: capabilities
// negotiation, synchronous commands, asynchronous events queued for the caller.
// QMP is line-delimited JSON; see QEMU's docs/interop/qmp-spec.txt.
#pragma once

#include "base/io.h"
#include "base/unique_fd.h"

#include <nlohmann/json.hpp>

#include <cstdint>
#include <chrono>
#include <deque>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace immortal::qemu {

using nlohmann::json;

using WallTime = std::chrono::system_clock::time_point;

struct QmpEvent {
  std::string name;
  json data;
  std::optional<WallTime> time;  // QEMU's "timestamp" (its wall clock, microseconds), when valid
};

// One line of QMP, classified. Throws QmpProtocolError for anything QEMU never sends.
struct QmpMessage {
  enum class Kind { greeting, success, error, event } kind;
  std::optional<std::uint64_t> id;
  json value;              // "return" value, error object or event data
  std::string event_name;  // for events
  std::optional<WallTime> time;  // for events: their "timestamp"
  std::string error_class, error_desc;
};
QmpMessage parse_qmp_message(std::string_view line);

// Splits a byte stream into lines, refusing lines longer than a limit.
class LineSplitter {
 public:
  explicit LineSplitter(std::size_t max_line) : max_line_(max_line) {}
  void feed(std::string_view bytes) { buffer_.append(bytes); }
  std::optional<std::string> next();  // throws QmpProtocolError for an over-long line

 private:
  std::size_t max_line_;
  std::string buffer_;
};

class QmpClient {
 public:
  // Reads the greeting and negotiates capabilities.
  QmpClient(UniqueFd socket, Deadline deadline);

  // Runs a command and returns its "return" value; throws Error(ExitCode::qemu) carrying QMP's
  // error class and description, or on timeout / closed socket.
  json execute(const std::string& command, const json& arguments = json::object(),
               Deadline deadline = Deadline::in(std::chrono::seconds(10)));
  // The same, handing QEMU a descriptor with the command (SCM_RIGHTS), as `getfd` and `add-fd`
  // expect: how a QEMU that runs as another user writes to a file only we can open.
  json execute_passing_fd(const std::string& command, const json& arguments, int fd, Deadline deadline);

  int fd() const { return socket_.get(); }
  // Reads whatever is available without blocking; returns the events received so far.
  std::vector<QmpEvent> take_events();
  bool closed() const { return closed_; }
  // When QEMU last sent the event `name` ("STOP", "RESUME"), on its clock: read up to what has
  // arrived, without blocking, and without taking the events from take_events().
  std::optional<WallTime> last_event_time(const std::string& name);
  const json& greeting() const { return greeting_; }

 private:
  // Blocks until one message arrives (events are queued, not returned).
  std::optional<QmpMessage> read_message(Deadline deadline);
  bool pump(Deadline deadline);  // one read into the splitter; false on timeout
  json send_and_wait(const std::string& command, const json& arguments, int fd, Deadline deadline);
  void drain();  // reads what has arrived, without blocking; events are queued
  void queue(QmpMessage& event);

  UniqueFd socket_;
  LineSplitter lines_;
  std::deque<QmpEvent> events_;
  std::map<std::string, WallTime> event_times_;
  json greeting_;
  std::uint64_t next_id_ = 1;
  bool closed_ = false;
};

}  // namespace immortal::qemu
