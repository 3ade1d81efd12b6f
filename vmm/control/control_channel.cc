#include "control/control_channel.h"

#include "base/error.h"
#include "protocol/base64.h"

#include <fmt/format.h>

namespace immortal::vmm {

json control_call(const std::string& socket_path, const json& request, Deadline deadline) {
  UniqueFd fd = connect_unix(socket_path);
  write_all(fd.get(), request.dump() + "\n", deadline);
  std::string buffer;
  for (;;) {
    if (auto nl = buffer.find('\n'); nl != std::string::npos) {
      json answer = json::parse(buffer.substr(0, nl), nullptr, false);
      if (answer.is_discarded() || !answer.is_object())
        fail(ExitCode::failure, "malformed answer from the supervisor");
      if (!answer.value("ok", false)) {
        int code = answer.value("exit_code", 1);
        if (code <= 0 || code > 255) code = 1;
        throw Error(static_cast<ExitCode>(code), answer.value("error", std::string("supervisor error")));
      }
      return answer;
    }
    if (buffer.size() > kMaxControlLine) fail(ExitCode::failure, "answer from the supervisor is too long");
    if (!wait_readable(fd.get(), deadline)) fail(ExitCode::timeout, "the supervisor did not answer in time");
    std::string data = read_some(fd.get(), 65536);
    if (data.empty()) fail(ExitCode::failure, "the supervisor closed the connection without answering");
    buffer += data;
  }
}

ExecOutcome exec_outcome(const json& answer, int timeout_s) {
  auto out = agent::base64_decode(answer.value("stdout", ""));
  auto err = agent::base64_decode(answer.value("stderr", ""));
  if (!out || !err) fail(ExitCode::failure, "malformed output from the supervisor");
  ExecOutcome o{0, std::move(*out), std::move(*err)};
  if (answer.contains("error")) o.err += "immortal: " + answer.value("error", std::string()) + "\n";
  if (answer.value("truncated", false)) o.err += "immortal: output truncated (the agent keeps at most 256 KiB per stream)\n";
  if (answer.value("timed_out", false)) {
    o.err += fmt::format("immortal: the command was killed after {} s\n", timeout_s);
    o.status = static_cast<int>(ExitCode::timeout);
  } else if (auto c = answer.find("exit_code"); c != answer.end() && c->is_number_integer()) {
    o.status = c->get<int>();
  } else if (auto s = answer.find("signal"); s != answer.end() && s->is_number_integer()) {
    o.status = 128 + s->get<int>();
  } else {
    o.status = static_cast<int>(ExitCode::failure);
  }
  return o;
}

ControlConnection::ControlConnection(UniqueFd fd) : fd_(std::move(fd)) { set_nonblocking(fd_.get(), true); }

std::optional<json> ControlConnection::on_readable() {
  bool would_block = false;
  std::string data = read_some(fd_.get(), 65536, &would_block);
  if (would_block) return std::nullopt;
  if (data.empty()) fail(ExitCode::failure, "control client hung up");
  buffer_ += data;
  auto nl = buffer_.find('\n');
  if (nl == std::string::npos) {
    if (buffer_.size() > kMaxControlLine) fail(ExitCode::usage, "control request too long");
    return std::nullopt;
  }
  json request = json::parse(buffer_.substr(0, nl), nullptr, false);
  if (request.is_discarded() || !request.is_object() || !request.contains("command") ||
      !request["command"].is_string())
    fail(ExitCode::usage, "malformed control request");
  return request;
}

void ControlConnection::reply(const json& answer) {
  json a = answer;
  a["ok"] = true;
  send(a);
}

void ControlConnection::reply_error(int exit_code, const std::string& message) {
  send({{"ok", false}, {"error", message}, {"exit_code", exit_code}});
}

void ControlConnection::send(const json& answer) {
  try {
    write_all(fd_.get(), answer.dump(-1, ' ', false, json::error_handler_t::replace) + "\n",
              Deadline::in(std::chrono::seconds(5)));
  } catch (const Error&) {
    // The client went away; nothing to tell it.
  }
}

}  // namespace immortal::vmm
