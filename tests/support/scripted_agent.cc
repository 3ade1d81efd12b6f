#include "support/scripted_agent.h"

#include "base/error.h"
#include "base/io.h"
#include "protocol/messages.h"

#include <sys/socket.h>
#include <unistd.h>

namespace immortal::test {

using namespace agent;

ScriptedAgent::ScriptedAgent() {
  int fds[2];
  if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds) != 0) fail_os(ExitCode::failure, "socketpair", errno);
  host_ = UniqueFd(fds[0]);
  guest_ = UniqueFd(fds[1]);
  set_nonblocking(guest_.get(), true);
}

void ScriptedAgent::send(const std::string& bytes) {
  if (::write(guest_.get(), bytes.data(), bytes.size()) != static_cast<ssize_t>(bytes.size()))
    fail_os(ExitCode::failure, "scripted agent write", errno);
}

void ScriptedAgent::hello(const std::string& boot_id, const std::string& release) {
  Hello h;
  h.agent_version = "scripted";
  h.kernel_release = release;
  h.boot_id = boot_id;
  h.hostname = "fake";
  send(encode_frame(MessageType::hello, to_payload(h)));
}

void ScriptedAgent::heartbeat() { send(encode_frame(MessageType::heartbeat, to_payload(Heartbeat{++seq_, seq_ * 1000}))); }

std::vector<std::vector<std::string>> ScriptedAgent::answer() {
  std::vector<std::vector<std::string>> seen;
  char buf[65536];
  for (;;) {
    ssize_t n = ::read(guest_.get(), buf, sizeof buf);
    if (n <= 0) break;
    from_host_.feed(std::string_view(buf, static_cast<std::size_t>(n)));
  }
  while (auto f = from_host_.next()) {
    if (f->type == MessageType::exec) {
      ExecRequest req = parse_exec_request(f->payload);
      seen.push_back(req.argv);
      if (!answer_execs) continue;
      ExecResult result;
      result.id = req.id;
      result.exit_code = exec_status;
      send(encode_frame(MessageType::exec_result, to_payload(result)));
    } else if (f->type == MessageType::spawn) {
      SpawnRequest req = parse_spawn_request(f->payload);
      send(encode_frame(MessageType::spawned, to_payload(Spawned{req.id, 4242, ""})));
    }
  }
  return seen;
}

}  // namespace immortal::test
