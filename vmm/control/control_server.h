// The server side of the control socket (control.sock): accepts connections, reads one request
// line from each and hands it on as a ControlRequest. Connections are known by an id that is
// never reused (a file descriptor number is: an answer that arrives late must not reach the next
// client that got the same descriptor).
#pragma once

#include "base/unique_fd.h"
#include "control/control_channel.h"

#include <poll.h>

#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

namespace immortal::vmm {

class ControlServer;
struct ControlInbox;  // the open connections, shared with the requests read from them

// One request, answered exactly once: reply() or fail(); later calls are ignored. A request
// dropped without an answer (every copy gone) answers its client with an internal error, so
// no client waits for ever. Copies share the one answer (callbacks may hold them).
class ControlRequest {
 public:
  const json& body() const;
  std::string command() const;
  void reply(const json& answer);
  void fail(int exit_code, const std::string& message);
  bool answered() const;
  std::uint64_t connection() const;

 private:
  friend class ControlServer;
struct ControlInbox;  // the open connections, shared with the requests read from them
  struct State;
  std::shared_ptr<State> state_;
};

class ControlServer {
 public:
  explicit ControlServer(const std::string& socket_path);
  ~ControlServer();

  // Adds the listener and every connection to a poll set.
  void add_to(std::vector<pollfd>& fds);
  // After poll(): reads what the connections of the last add_to() sent, calling handle for each
  // complete request, then accepts new connections.
  void serve(const std::vector<pollfd>& fds, const std::function<void(ControlRequest)>& handle);
  // Answers every open connection with this error and closes it (the instance is stopping),
  // but the one given (a request still to be answered on it).
  void close_all(const std::string& why, std::uint64_t except = 0);
  // No new clients (the socket goes to the supervisor taking over); requests held still answer.
  void stop_listening();
  // Clients again (a hand-over was rolled back).
  void listen(const std::string& socket_path);

 private:
  void accept_new();
  UniqueFd listener_;
  std::shared_ptr<ControlInbox> inbox_;
  std::vector<std::pair<std::size_t, std::uint64_t>> polled_;  // (index in the poll set, connection id)
  std::size_t listener_index_ = 0;
};

}  // namespace immortal::vmm
