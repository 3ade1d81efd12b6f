#include "control/control_server.h"

#include "base/error.h"

#include <sys/socket.h>

namespace immortal::vmm {

namespace {
constexpr std::size_t kMaxClients = 64;
}

struct ControlInbox {
  std::map<std::uint64_t, std::unique_ptr<ControlConnection>> open;
  std::uint64_t next_id = 1;

  void answer(std::uint64_t id, const json* answer, int code, const std::string& message) {
    auto it = open.find(id);
    if (it == open.end()) return;  // the client went away meanwhile
    if (answer) it->second->reply(*answer);
    else it->second->reply_error(code, message);
    open.erase(it);
  }
};

struct ControlRequest::State {
  std::weak_ptr<vmm::ControlInbox> inbox;
  std::uint64_t connection = 0;
  json body;
  bool answered = false;

  ~State() {
    if (answered) return;
    if (auto in = inbox.lock())
      in->answer(connection, nullptr, static_cast<int>(ExitCode::failure),
                 "the supervisor dropped this request without an answer (a bug; please report it)");
  }
};

const json& ControlRequest::body() const { return state_->body; }
bool ControlRequest::answered() const { return state_->answered; }
std::uint64_t ControlRequest::connection() const { return state_->connection; }

std::string ControlRequest::command() const {
  auto it = state_->body.find("command");
  return it != state_->body.end() && it->is_string() ? it->get<std::string>() : "";
}

void ControlRequest::reply(const json& answer) {
  if (state_->answered) return;
  state_->answered = true;
  if (auto in = state_->inbox.lock()) in->answer(state_->connection, &answer, 0, "");
}

void ControlRequest::fail(int exit_code, const std::string& message) {
  if (state_->answered) return;
  state_->answered = true;
  if (auto in = state_->inbox.lock()) in->answer(state_->connection, nullptr, exit_code, message);
}

ControlServer::ControlServer(const std::string& socket_path)
    : listener_(listen_unix(socket_path)), inbox_(std::make_shared<ControlInbox>()) {
  set_nonblocking(listener_.get(), true);
}

ControlServer::~ControlServer() = default;

void ControlServer::add_to(std::vector<pollfd>& fds) {
  polled_.clear();
  listener_index_ = fds.size();
  if (listener_) fds.push_back({listener_.get(), POLLIN, 0});
  for (auto& [id, c] : inbox_->open) {
    polled_.emplace_back(fds.size(), id);
    fds.push_back({c->fd(), POLLIN, 0});
  }
}

void ControlServer::serve(const std::vector<pollfd>& fds, const std::function<void(ControlRequest)>& handle) {
  for (auto [index, id] : polled_) {
    if (index >= fds.size() || !fds[index].revents) continue;
    auto it = inbox_->open.find(id);
    if (it == inbox_->open.end()) continue;
    std::optional<json> body;
    try {
      body = it->second->on_readable();
    } catch (const Error& e) {
      if (e.code() == ExitCode::usage) it->second->reply_error(e.exit_code(), e.what());
      inbox_->open.erase(it);
      continue;
    }
    if (!body) continue;
    ControlRequest request;
    request.state_ = std::make_shared<ControlRequest::State>();
    request.state_->inbox = inbox_;
    request.state_->connection = id;
    request.state_->body = std::move(*body);
    handle(std::move(request));
  }
  polled_.clear();
  accept_new();
}

void ControlServer::accept_new() {
  while (listener_) {
    int fd = ::accept4(listener_.get(), nullptr, nullptr, SOCK_CLOEXEC | SOCK_NONBLOCK);
    if (fd < 0) return;
    UniqueFd client(fd);
    if (inbox_->open.size() >= kMaxClients) continue;  // closed: too many at once
    inbox_->open.emplace(inbox_->next_id++, std::make_unique<ControlConnection>(std::move(client)));
  }
}

void ControlServer::close_all(const std::string& why, std::uint64_t except) {
  for (auto it = inbox_->open.begin(); it != inbox_->open.end();) {
    if (it->first == except) {
      ++it;
      continue;
    }
    it->second->reply_error(static_cast<int>(ExitCode::failure), why);
    it = inbox_->open.erase(it);
  }
}

void ControlServer::listen(const std::string& socket_path) {
  listener_ = listen_unix(socket_path);
  set_nonblocking(listener_.get(), true);
}

void ControlServer::stop_listening() {
  listener_.reset();
  polled_.clear();
}

}  // namespace immortal::vmm
