// The host's agent channel against a scripted guest on a socketpair.
#include "agent_channel.h"
#include "base/error.h"
#include "protocol/messages.h"

#include <catch2/catch.hpp>

#include <sys/socket.h>
#include <unistd.h>

#include <thread>

using namespace immortal;
using namespace immortal::vmm;
using namespace immortal::agent;

namespace {
struct Pair {
  UniqueFd host, guest;
  Pair() {
    int fds[2];
    REQUIRE(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds) == 0);
    host = UniqueFd(fds[0]);
    guest = UniqueFd(fds[1]);
  }
  void guest_sends(const std::string& bytes) { REQUIRE(::write(guest.get(), bytes.data(), bytes.size()) == static_cast<ssize_t>(bytes.size())); }
  FrameDecoder from_host;
  Frame guest_receives() {
    char buf[65536];
    for (;;) {
      if (auto f = from_host.next()) return *f;
      ssize_t n = ::read(guest.get(), buf, sizeof buf);
      REQUIRE(n > 0);
      from_host.feed(std::string_view(buf, static_cast<std::size_t>(n)));
    }
  }
};
}  // namespace

SCENARIO("the host talks to a well-behaved agent", "[agent]") {
  Pair p;
  AgentChannel channel(std::move(p.host));
  GIVEN("a hello and a heartbeat") {
    Hello h;
    h.agent_version = "t";
    h.kernel_release = "6.1.0-test";
    h.boot_id = "id";
    h.hostname = "g";
    p.guest_sends(encode_frame(MessageType::hello, to_payload(h)) +
                  encode_frame(MessageType::heartbeat, to_payload(Heartbeat{1, 10})));
    channel.on_readable();
    THEN("both are recorded") {
      REQUIRE(channel.hello());
      CHECK(channel.hello()->kernel_release == "6.1.0-test");
      CHECK(channel.heartbeats() == 1);
      CHECK(channel.last_heard());
    }
    WHEN("an exec is answered") {
      std::optional<ExecResult> got;
      channel.exec({"echo", "hi"}, 1000, [&](const ExecResult* r, const std::string&) { got = *r; });
      Frame request = p.guest_receives();
      REQUIRE(request.type == MessageType::exec);
      ExecRequest req = parse_exec_request(request.payload);
      CHECK(req.argv == std::vector<std::string>{"echo", "hi"});
      ExecResult result;
      result.id = req.id;
      result.exit_code = 0;
      result.stdout_data = "hi\n";
      p.guest_sends(encode_frame(MessageType::exec_result, to_payload(result)));
      channel.on_readable();
      THEN("the callback gets the output") {
        REQUIRE(got);
        CHECK(got->stdout_data == "hi\n");
      }
    }
  }
}

SCENARIO("a hostile agent cannot confuse the host", "[agent]") {
  Pair p;
  AgentChannel channel(std::move(p.host));
  std::string failure;
  channel.exec({"true"}, 1000, [&](const ExecResult* r, const std::string& e) { if (!r) failure = e; });
  WHEN("it sends garbage") {
    p.guest_sends("GET / HTTP/1.0\r\n\r\n");
    THEN("it is reported as a protocol error, pending requests fail, and the channel stays open") {
      try {
        channel.on_readable();
        FAIL("accepted garbage");
      } catch (const Error& e) {
        CHECK(e.code() == ExitCode::agent);
        CHECK_THAT(e.what(), Catch::Contains("bad frame magic"));
      }
      CHECK_FALSE(channel.closed());
      CHECK(channel.resyncs() >= 1);
      CHECK_THAT(failure, Catch::Contains("lost sync"));
      AND_THEN("the frames that follow the garbage are read") {
        p.guest_sends(encode_frame(MessageType::heartbeat, to_payload(Heartbeat{1, 10})));
        channel.on_readable();
        CHECK(channel.heartbeats() == 1);
      }
    }
  }
  WHEN("it answers a request nobody made") {
    ExecResult result;
    result.id = 999;
    result.exit_code = 0;
    p.guest_sends(encode_frame(MessageType::exec_result, to_payload(result)));
    THEN("that is a protocol error") { CHECK_THROWS_AS(channel.on_readable(), Error); }
  }
  WHEN("it answers a spawn nobody asked for") {
    p.guest_sends(encode_frame(MessageType::spawned, to_payload(Spawned{77, 10, ""})));
    THEN("that is a protocol error") { CHECK_THROWS_WITH(channel.on_readable(), Catch::Contains("unknown request 77")); }
  }
  WHEN("a spawn is answered with a pid") {
    int pid = -1;
    channel.spawn({"victim"}, [&](int got, const std::string&) { pid = got; });
    Frame request = p.guest_receives();
    if (request.type == MessageType::exec) request = p.guest_receives();  // the scenario's own exec
    REQUIRE(request.type == MessageType::spawn);
    auto req = parse_spawn_request(request.payload);
    p.guest_sends(encode_frame(MessageType::spawned, to_payload(Spawned{req.id, 4242, ""})));
    channel.on_readable();
    THEN("the callback gets it") { CHECK(pid == 4242); }
  }
  WHEN("it sends a host-only message") {
    p.guest_sends(encode_frame(MessageType::exec, R"({"id":1,"argv":["x"],"timeout_ms":1})"));
    THEN("that is a protocol error") { CHECK_THROWS_WITH(channel.on_readable(), Catch::Contains("unexpected message")); }
  }
  WHEN("it hangs up") {
    p.guest.reset();
    channel.on_readable();
    THEN("pending requests fail and the channel is closed") {
      CHECK(channel.closed());
      CHECK_THAT(failure, Catch::Contains("closed"));
    }
  }
}

SCENARIO("the channel resynchronises after a torn frame, a guest reset or an agent restart", "[agent]") {
  Pair p;
  AgentChannel channel(std::move(p.host), std::chrono::milliseconds(200));
  Hello h;
  h.agent_version = "t";
  h.kernel_release = "6.1.0-test";
  h.boot_id = "boot-1";
  h.hostname = "g";
  p.guest_sends(encode_frame(MessageType::hello, to_payload(h)));
  channel.on_readable();
  REQUIRE(channel.hello());
  std::string failure;
  channel.exec({"sleep", "100"}, 1000, [&](const ExecResult* r, const std::string& e) { if (!r) failure = e; });
  WHEN("the guest resets in the middle of a frame and its new agent says hello") {
    std::string torn = encode_frame(MessageType::exec_result, std::string(400, 'x'));
    p.guest_sends(torn.substr(0, 100));  // the rest never comes
    channel.on_readable();
    h.boot_id = "boot-2";
    p.guest_sends(encode_frame(MessageType::hello, to_payload(h)));
    try {
      channel.on_readable();  // swallowed as the torn frame's payload for now
    } catch (const Error&) {
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(250));
    p.guest_sends(encode_frame(MessageType::heartbeat, to_payload(Heartbeat{1, 10})));
    try {
      channel.on_readable();
    } catch (const Error& e) {
      CHECK_THAT(e.what(), Catch::Contains("never completed"));
    }
    THEN("the new boot's hello is found behind the torn bytes and the channel goes on") {
      CHECK_FALSE(channel.closed());
      REQUIRE(channel.hello());
      CHECK(channel.hello()->boot_id == "boot-2");
      CHECK(channel.heartbeats() == 1);
      CHECK_FALSE(failure.empty());  // the old boot's request will never be answered
    }
  }
  WHEN("the agent restarts: a second hello on the open channel") {
    h.agent_version = "t2";
    p.guest_sends(encode_frame(MessageType::hello, to_payload(h)));
    channel.on_readable();
    THEN("what the old agent was asked fails at once") {
      CHECK_THAT(failure, Catch::Contains("restarted"));
      CHECK(channel.hello()->agent_version == "t2");
    }
  }
  WHEN("a message in a well-formed frame is malformed") {
    p.guest_sends(encode_frame(MessageType::heartbeat, "{not json") +
                  encode_frame(MessageType::heartbeat, to_payload(Heartbeat{1, 10})));
    CHECK_THROWS_AS(channel.on_readable(), Error);
    THEN("only that message is dropped") {
      CHECK(channel.heartbeats() == 1);
      CHECK(failure.empty());
      CHECK(channel.resyncs() == 0);
    }
  }
}

SCENARIO("the host speaks the protocol version each agent says hello in", "[agent]") {
  Pair p;
  AgentChannel channel(std::move(p.host));
  Hello h;
  h.agent_version = "t";
  h.kernel_release = "6.1.0-test";
  h.boot_id = "id";
  h.hostname = "g";
  WHEN("an agent of every version this build speaks says hello") {
    for (std::uint16_t version = kOldestProtocolVersion; version <= kProtocolVersion; ++version) {
      h.protocol = version;
      p.guest_sends(encode_frame(MessageType::hello, to_payload(h), version));
      channel.on_readable();
      channel.ping();
      Frame request = p.guest_receives();
      THEN("requests to it go in its version " << version) {
        CHECK(channel.protocol() == version);
        CHECK(request.version == version);
        CHECK(request.type == MessageType::ping);
      }
    }
  }
  WHEN("an agent of a version this build does not speak says hello") {
    h.protocol = kProtocolVersion + 1;
    std::string frame = encode_frame(MessageType::hello, to_payload(h));
    frame[4] = static_cast<char>(kProtocolVersion + 1);  // the header's version field
    p.guest_sends(frame);
    THEN("the error says which versions this build speaks, and no hello is taken") {
      CHECK_THROWS_WITH(channel.on_readable(), Catch::Contains("unsupported protocol version " +
                                                               std::to_string(kProtocolVersion + 1)) &&
                                               Catch::Contains("this build speaks " + supported_versions()));
      CHECK_FALSE(channel.hello());
    }
  }
  WHEN("a hello names a version other than its frame's") {
    h.protocol = kProtocolVersion + 1;
    p.guest_sends(encode_frame(MessageType::hello, to_payload(h)));
    THEN("it is refused") {
      CHECK_THROWS_AS(channel.on_readable(), Error);
      CHECK_FALSE(channel.hello());
    }
  }
}

TEST_CASE("a request the agent never answers fails at its deadline; a late answer is dropped quietly", "[agent]") {
  Pair p;
  AgentChannel channel(std::move(p.host));
  std::optional<std::string> exec_error, spawn_error;
  int spawn_pid = -1;
  channel.exec({"true"}, 1000, [&](const ExecResult* r, const std::string& e) {
    CHECK(r == nullptr);
    exec_error = e;
  });
  channel.spawn({"/sbin/victim"}, [&](int pid, const std::string& e) {
    spawn_pid = pid;
    spawn_error = e;
  });
  ExecRequest req = parse_exec_request(p.guest_receives().payload);
  SpawnRequest spawn = parse_spawn_request(p.guest_receives().payload);

  // Before the deadline nothing happens; after it both callers hear why.
  channel.expire_overdue(Clock::now() + std::chrono::seconds(1));
  CHECK_FALSE(exec_error);
  CHECK_FALSE(spawn_error);
  channel.expire_overdue(Clock::now() + std::chrono::milliseconds(1000) + AgentChannel::kAnswerWait + std::chrono::seconds(1));
  REQUIRE(exec_error);
  CHECK(*exec_error == "the guest agent did not answer in time");
  REQUIRE(spawn_error);
  CHECK(spawn_pid == 0);

  // The guest wakes up and answers both: not a protocol error, and no second callback.
  ExecResult result;
  result.id = req.id;
  result.exit_code = 0;
  Spawned spawned;
  spawned.id = spawn.id;
  spawned.pid = 42;
  p.guest_sends(encode_frame(MessageType::exec_result, to_payload(result)) +
                encode_frame(MessageType::spawned, to_payload(spawned)));
  CHECK_NOTHROW(channel.on_readable());
  CHECK(spawn_pid == 0);
}

TEST_CASE("abandoned requests' late answers are not protocol errors", "[agent]") {
  Pair p;
  AgentChannel channel(std::move(p.host));
  std::string error;
  channel.exec({"true"}, 1000, [&](const ExecResult*, const std::string& e) { error = e; });
  ExecRequest req = parse_exec_request(p.guest_receives().payload);
  channel.abandon("the guest kernel crashed and is frozen");
  CHECK(error == "the guest kernel crashed and is frozen");
  ExecResult result;
  result.id = req.id;
  result.exit_code = 0;
  p.guest_sends(encode_frame(MessageType::exec_result, to_payload(result)));
  CHECK_NOTHROW(channel.on_readable());
}

TEST_CASE("a command the agent would refuse is refused at once, and a refusal by the agent reaches its caller",
          "[agent]") {
  Pair p;
  AgentChannel channel(std::move(p.host));
  // An argument beyond the protocol's 4096 bytes: said at once, nothing sent.
  std::optional<std::string> error;
  channel.exec({"sh", "-c", std::string(5000, 'x')}, 1000, [&](const ExecResult* r, const std::string& e) {
    CHECK(r == nullptr);
    error = e;
  });
  REQUIRE(error);
  CHECK_THAT(*error, Catch::Contains("5000 bytes long") && Catch::Contains("at most 4096"));
  std::optional<std::string> spawn_error;
  channel.spawn(std::vector<std::string>(300, "a"), [&](int pid, const std::string& e) {
    CHECK(pid == 0);
    spawn_error = e;
  });
  REQUIRE(spawn_error);
  CHECK_THAT(*spawn_error, Catch::Contains("300 arguments"));

  // An agent that refuses a request it cannot parse names its id: the caller hears why, not a timeout.
  std::optional<std::string> refused;
  channel.exec({"true"}, 1000, [&](const ExecResult* r, const std::string& e) {
    CHECK(r == nullptr);
    refused = e;
  });
  Frame sent = p.guest_receives();
  REQUIRE(request_id_of(sent.payload));
  p.guest_sends(encode_frame(MessageType::error, to_payload(ErrorMessage{request_id_of(sent.payload), "field \"argv\" …"})));
  channel.on_readable();
  REQUIRE(refused);
  CHECK_THAT(*refused, Catch::Contains("agent: field"));
  CHECK_FALSE(request_id_of("not json"));
  CHECK_FALSE(request_id_of(R"({"id": -1})"));
  CHECK(request_id_of(R"({"id": 7, "argv": 5})") == 7u);
}
