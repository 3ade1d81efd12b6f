#include "qemu/qmp_client.h"

#include "base/error.h"

#include <sys/socket.h>

#include <cerrno>
#include <cstring>

namespace immortal::qemu {

namespace {
constexpr std::size_t kMaxLine = 16 << 20;

[[noreturn]] void bad(const std::string& why) { fail(ExitCode::qemu, "QMP: {}", why); }
}  // namespace

QmpMessage parse_qmp_message(std::string_view line) {
  json j = json::parse(line, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object()) bad("not a JSON object: " + std::string(line.substr(0, 200)));
  QmpMessage m{};
  if (auto id = j.find("id"); id != j.end()) {
    if (!id->is_number_unsigned()) bad("unexpected id");
    m.id = id->get<std::uint64_t>();
  }
  if (j.contains("QMP")) {
    m.kind = QmpMessage::Kind::greeting;
    m.value = j["QMP"];
  } else if (j.contains("return")) {
    m.kind = QmpMessage::Kind::success;
    m.value = j["return"];
  } else if (auto e = j.find("error"); e != j.end()) {
    m.kind = QmpMessage::Kind::error;
    m.value = *e;
    if (e->is_object()) {
      m.error_class = e->value("class", "");
      m.error_desc = e->value("desc", "");
    }
  } else if (auto ev = j.find("event"); ev != j.end() && ev->is_string()) {
    m.kind = QmpMessage::Kind::event;
    m.event_name = ev->get<std::string>();
    m.value = j.value("data", json::object());
    // {"seconds": S, "microseconds": U}: QEMU's g_get_real_time() when it emitted the event.
    if (auto t = j.find("timestamp"); t != j.end() && t->is_object()) {
      auto s = t->find("seconds"), u = t->find("microseconds");
      if (s != t->end() && u != t->end() && s->is_number_unsigned() && u->is_number_unsigned() &&
          s->get<std::uint64_t>() < (1ull << 40) && u->get<std::uint64_t>() < 1'000'000)
        m.time = WallTime(std::chrono::duration_cast<WallTime::duration>(std::chrono::seconds(s->get<std::uint64_t>()) +
                                                                          std::chrono::microseconds(u->get<std::uint64_t>())));
    }
  } else {
    bad("unknown message: " + std::string(line.substr(0, 200)));
  }
  return m;
}

std::optional<std::string> LineSplitter::next() {
  auto nl = buffer_.find('\n');
  if (nl == std::string::npos) {
    if (buffer_.size() > max_line_) bad("line longer than " + std::to_string(max_line_) + " bytes");
    return std::nullopt;
  }
  if (nl > max_line_) bad("line longer than " + std::to_string(max_line_) + " bytes");
  std::string line = buffer_.substr(0, nl);
  buffer_.erase(0, nl + 1);
  if (!line.empty() && line.back() == '\r') line.pop_back();
  return line;
}

QmpClient::QmpClient(UniqueFd socket, Deadline deadline)
    : socket_(std::move(socket)), lines_(kMaxLine) {
  set_nonblocking(socket_.get(), true);
  auto greeting = read_message(deadline);
  if (!greeting || greeting->kind != QmpMessage::Kind::greeting) bad("no greeting from QEMU");
  greeting_ = greeting->value;
  execute("qmp_capabilities", json::object(), deadline);
}

bool QmpClient::pump(Deadline deadline) {
  if (closed_) bad("connection closed by QEMU");
  if (!wait_readable(socket_.get(), deadline)) return false;
  bool would_block = false;
  std::string data = read_some(socket_.get(), 65536, &would_block);
  if (would_block) return true;
  if (data.empty()) {
    closed_ = true;
    bad("connection closed by QEMU");
  }
  lines_.feed(data);
  return true;
}

std::optional<QmpMessage> QmpClient::read_message(Deadline deadline) {
  for (;;) {
    while (auto line = lines_.next()) {
      if (line->empty()) continue;
      QmpMessage m = parse_qmp_message(*line);
      if (m.kind == QmpMessage::Kind::event) {
        queue(m);
        continue;
      }
      return m;
    }
    if (!pump(deadline)) return std::nullopt;
  }
}

json QmpClient::execute(const std::string& command, const json& arguments, Deadline deadline) {
  return send_and_wait(command, arguments, -1, deadline);
}

json QmpClient::execute_passing_fd(const std::string& command, const json& arguments, int fd, Deadline deadline) {
  return send_and_wait(command, arguments, fd, deadline);
}

json QmpClient::send_and_wait(const std::string& command, const json& arguments, int fd, Deadline deadline) {
  std::uint64_t id = next_id_++;
  json request = {{"execute", command}, {"id", id}};
  if (!arguments.empty()) request["arguments"] = arguments;
  std::string line = request.dump() + "\n";
  std::size_t sent = 0;
  if (fd >= 0) {
    // The descriptor rides on the first bytes of the command; the rest follows as usual.
    iovec iov{line.data(), line.size()};
    alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int))] = {};
    msghdr msg{};
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control;
    msg.msg_controllen = sizeof control;
    cmsghdr* c = CMSG_FIRSTHDR(&msg);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof(int));
    std::memcpy(CMSG_DATA(c), &fd, sizeof(int));
    ssize_t n;
    do {
      n = ::sendmsg(socket_.get(), &msg, MSG_NOSIGNAL);
    } while (n < 0 && errno == EINTR);
    if (n < 0) fail_os(ExitCode::qemu, "QMP: send " + command, errno);
    sent = static_cast<std::size_t>(n);
  }
  if (sent < line.size()) write_all(socket_.get(), line.substr(sent), deadline);
  for (;;) {
    auto m = read_message(deadline);
    if (!m) fail(ExitCode::timeout, "QMP: no answer to {} in time", command);
    if (m->id != id) continue;  // a late answer to an earlier, timed-out command
    if (m->kind == QmpMessage::Kind::error)
      fail(ExitCode::qemu, "QMP {} failed: {} ({})", command, m->error_desc, m->error_class);
    if (m->kind != QmpMessage::Kind::success) bad("unexpected answer to " + command);
    return m->value;
  }
}

void QmpClient::queue(QmpMessage& event) {
  if (event.time) event_times_[event.event_name] = *event.time;
  events_.push_back({event.event_name, std::move(event.value), event.time});
}

void QmpClient::drain() {
  if (closed_) return;
  try {
    for (;;) {
      bool would_block = false;
      std::string data = read_some(socket_.get(), 65536, &would_block);
      if (would_block) break;
      if (data.empty()) {
        closed_ = true;
        break;
      }
      lines_.feed(data);
    }
    while (auto line = lines_.next()) {
      if (line->empty()) continue;
      QmpMessage m = parse_qmp_message(*line);
      if (m.kind == QmpMessage::Kind::event) queue(m);
    }
  } catch (const Error&) {
    closed_ = true;
  }
}

std::optional<WallTime> QmpClient::last_event_time(const std::string& name) {
  drain();
  auto it = event_times_.find(name);
  if (it == event_times_.end()) return std::nullopt;
  return it->second;
}

std::vector<QmpEvent> QmpClient::take_events() {
  drain();
  std::vector<QmpEvent> out(events_.begin(), events_.end());
  events_.clear();
  return out;
}

}  // namespace immortal::qemu
