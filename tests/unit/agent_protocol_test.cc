// The agent protocol as the host sees it: frames and messages from an untrusted guest.
#include "protocol/base64.h"
#include "protocol/frame.h"
#include "protocol/messages.h"
#include "serial_watch.h"

#include <catch2/catch.hpp>

using namespace immortal::agent;

static std::string header(std::uint32_t magic, std::uint16_t version, std::uint16_t type, std::uint32_t length) {
  std::string h;
  for (int i = 0; i < 4; ++i) h.push_back(static_cast<char>(magic >> (8 * i)));
  for (int i = 0; i < 2; ++i) h.push_back(static_cast<char>(version >> (8 * i)));
  for (int i = 0; i < 2; ++i) h.push_back(static_cast<char>(type >> (8 * i)));
  for (int i = 0; i < 4; ++i) h.push_back(static_cast<char>(length >> (8 * i)));
  return h;
}

TEST_CASE("a frame survives encoding and byte-by-byte decoding", "[protocol]") {
  std::string wire = encode_frame(MessageType::ping, R"({"id":7})") + encode_frame(MessageType::poweroff, "{}");
  REQUIRE(wire.substr(0, 4) == "IMRT");
  FrameDecoder decoder;
  std::vector<Frame> frames;
  for (char c : wire) {
    decoder.feed(std::string_view(&c, 1));
    while (auto f = decoder.next()) frames.push_back(*f);
  }
  REQUIRE(frames.size() == 2);
  CHECK(frames[0].type == MessageType::ping);
  CHECK(parse_ping(frames[0].payload).id == 7);
  CHECK(frames[1].type == MessageType::poweroff);
  CHECK(decoder.buffered() == 0);
}

TEST_CASE("a decoder gives back what a large frame grew once it is read", "[protocol]") {
  FrameDecoder decoder;
  std::string big(1 << 20, 'x');
  std::string wire = encode_frame(MessageType::ping, R"({"id":1})");
  std::string large = encode_frame(MessageType::poweroff, big);
  decoder.feed(std::string_view(large).substr(0, 1000));
  CHECK_FALSE(decoder.next().has_value());
  decoder.feed(std::string_view(large).substr(1000));
  auto f = decoder.next();
  REQUIRE(f);
  CHECK(f->payload == big);
  CHECK(decoder.buffered() == 0);
  CHECK(decoder.held_bytes() < 64 * 1024);
  decoder.feed(wire);
  auto g = decoder.next();
  REQUIRE(g);
  CHECK(parse_ping(g->payload).id == 1);
}

TEST_CASE("malformed frames are refused, and stay refused", "[protocol]") {
  SECTION("bad magic") {
    FrameDecoder d;
    d.feed(header(0x12345678, 1, 1, 0));
    REQUIRE_THROWS_WITH(d.next(), Catch::Contains("bad frame magic"));
    d.feed(encode_frame(MessageType::ping, "{}"));
    REQUIRE_THROWS_AS(d.next(), ProtocolError);
  }
  SECTION("wrong version") {
    FrameDecoder d;
    d.feed(header(kMagic, 9, 1, 0));
    REQUIRE_THROWS_WITH(d.next(), Catch::Contains("unsupported protocol version 9"));
  }
  SECTION("unknown type") {
    FrameDecoder d;
    d.feed(header(kMagic, 1, 99, 0));
    REQUIRE_THROWS_WITH(d.next(), Catch::Contains("unknown message type 99"));
  }
  SECTION("oversized payload is refused from the header alone") {
    FrameDecoder d;
    d.feed(header(kMagic, 1, 1, 0x7fffffff));
    REQUIRE_THROWS_WITH(d.next(), Catch::Contains("exceeds the limit"));
  }
  SECTION("a partial frame is not a frame") {
    FrameDecoder d;
    d.feed(header(kMagic, 1, 1, 10) + "abc");
    REQUIRE_FALSE(d.next().has_value());
  }
}

TEST_CASE("messages round-trip and bad fields are named", "[protocol]") {
  Hello h;
  h.agent_version = "0.1.0";
  h.kernel_release = "6.1.0-56-amd64";
  h.boot_id = "b0";
  h.uptime_ms = 1234;
  h.hostname = "g";
  Hello back = parse_hello(to_payload(h));
  CHECK(back.kernel_release == h.kernel_release);
  CHECK(back.uptime_ms == 1234);

  ExecResult r;
  r.id = 3;
  r.exit_code = 2;
  r.stdout_data = std::string("\x00\xff binary\n", 9);
  ExecResult r2 = parse_exec_result(to_payload(r));
  CHECK(r2.stdout_data == r.stdout_data);
  CHECK(r2.exit_code == 2);
  CHECK_FALSE(r2.signal.has_value());

  CHECK_THROWS_WITH(parse_hello("not json"), Catch::Contains("not valid JSON"));
  CHECK_THROWS_WITH(parse_hello("[1,2]"), Catch::Contains("not a JSON object"));
  CHECK_THROWS_WITH(parse_hello(R"({"protocol":2})"), Catch::Contains("protocol 2"));
  CHECK_THROWS_WITH(parse_heartbeat(R"({"seq":-1,"uptime_ms":0})"), Catch::Contains("\"seq\""));
  CHECK_THROWS_WITH(parse_exec_result(R"({"id":1,"exit_code":0,"signal":9,"stdout":"","stderr":"","truncated":false,"timed_out":false})"),
                    Catch::Contains("exactly one"));
  CHECK_THROWS_WITH(parse_exec_result(R"({"id":1,"exit_code":0,"signal":null,"stdout":"!!!!","stderr":"","truncated":false,"timed_out":false})"),
                    Catch::Contains("not base64"));
  CHECK_THROWS_WITH(parse_exec_request(R"({"id":1,"argv":[],"timeout_ms":5})"), Catch::Contains("argv"));
  std::string huge(kMaxText + 1, 'x');
  CHECK_THROWS_WITH(parse_hello(R"({"protocol":1,"agent_version":")" + huge + R"("})"), Catch::Contains("too long"));
}

TEST_CASE("base64 matches RFC 4648 vectors and rejects garbage", "[protocol]") {
  const std::pair<const char*, const char*> vectors[] = {
      {"", ""}, {"f", "Zg=="}, {"fo", "Zm8="}, {"foo", "Zm9v"}, {"foob", "Zm9vYg=="}, {"fooba", "Zm9vYmE="},
      {"foobar", "Zm9vYmFy"}};
  for (auto [plain, encoded] : vectors) {
    CHECK(base64_encode(plain) == encoded);
    CHECK(base64_decode(encoded) == std::string(plain));
  }
  CHECK_FALSE(base64_decode("Zm9").has_value());
  CHECK_FALSE(base64_decode("Zm=v").has_value());
  CHECK_FALSE(base64_decode("Z===").has_value());
}

TEST_CASE("spawn requests and answers are validated", "[protocol]") {
  SpawnRequest request{4, {"/sbin/immortal-victim", "null-deref"}};
  CHECK(parse_spawn_request(to_payload(request)).argv == request.argv);
  Spawned ok{4, 123, ""};
  CHECK(parse_spawned(to_payload(ok)).pid == 123);
  Spawned failed{4, 0, "cannot execute x"};
  CHECK(parse_spawned(to_payload(failed)).error == "cannot execute x");
  CHECK_THROWS_WITH(parse_spawned(R"({"id":1,"pid":0})"), Catch::Contains("either a pid or an error"));
  CHECK_THROWS_WITH(parse_spawned(R"({"id":1,"pid":5,"error":"x"})"), Catch::Contains("either a pid or an error"));
  CHECK_THROWS_WITH(parse_spawned(R"({"id":1,"pid":-5})"), Catch::Contains("negative"));
  CHECK_THROWS_WITH(parse_spawned(R"({"id":1,"pid":99999999999})"), Catch::Contains("out of range"));
  CHECK_THROWS_AS(parse_spawn_request(R"({"id":1,"argv":[1,2]})"), ProtocolError);
}

TEST_CASE("heartbeats carry the serial ports the agent set going again, and older agents' parse as 0", "[agent-protocol]") {
  Heartbeat h{7, 1000, 3, 2};
  Heartbeat back = parse_heartbeat(to_payload(h));
  CHECK(back.serial_rearmed == 2);
  CHECK(back.modules_generation == 3);
  CHECK(parse_heartbeat(R"({"seq":1,"uptime_ms":5})").serial_rearmed == 0);
  CHECK_THROWS_AS(parse_heartbeat(R"({"seq":1,"uptime_ms":5,"serial_rearmed":"many"})"), ProtocolError);
}

TEST_CASE("the serial watch reads /proc/tty/driver/serial and skips what it does not understand", "[agent-protocol]") {
  auto lines = parse_serial_driver(
      "serinfo:1.0 driver revision:\n"
      "0: uart:16550A port:000003F8 irq:4 tx:165961 rx:0 RTS|CTS|DTR|DSR|CD\n"
      "1: uart:unknown port:000002F8 irq:3\n"
      "2: uart:16550A port:000003E8 irq:4 tx:0 rx:0 CTS|DSR|CD\n"
      "x: uart:16550A tx:5\n"
      "3: uart:16550A port:000002E8 irq:3 tx:12z rx:0\n"
      "300: uart:16550A tx:9\n");
  REQUIRE(lines.size() == 2);
  CHECK(lines[0].line == 0);
  CHECK(lines[0].uart == "16550A");
  CHECK(lines[0].tx == 165961);
  CHECK(lines[1].line == 2);
  CHECK(lines[1].tx == 0);
  CHECK(parse_serial_driver("").empty());
  CHECK(parse_serial_driver("0:\n:\n0: tx:\n").empty());
}

TEST_CASE("the serial watch re-arms a port stalled with output queued, also one that stalled before its first byte",
          "[agent-protocol]") {
  struct FakePorts final : SerialPorts {
    int queue = 0;
    int asked = 0, rearms = 0;
    std::optional<Look> look(int) override {
      ++asked;
      rearms += queue > 0;
      return Look{queue, queue > 0};
    }
  } ports;
  SerialWatch watch;
  auto at = [](std::uint64_t tx) { return std::vector<SerialLine>{{0, "16550A", tx}}; };
  std::uint64_t t = 1000;
  // Output flowing: nothing asked.
  for (std::uint64_t tx : {10, 20, 30}) CHECK(watch.check(at(tx), t += 1000, ports).empty());
  CHECK(ports.asked == 0);
  // Still for kStillMs with nothing queued: idle, asked once, not again a second later.
  CHECK(watch.check(at(30), t += SerialWatch::kStillMs, ports).empty());
  CHECK(ports.asked == 1);
  CHECK(watch.check(at(30), t += 1000, ports).empty());
  CHECK(ports.asked == 1);
  // A writer whose first byte never left: the count stays where it was, output is queued. The
  // idle port is asked again and set going.
  ports.queue = 812;
  std::vector<std::string> done;
  for (int s = 0; s < 12 && done.empty(); ++s) done = watch.check(at(30), t += 1000, ports);
  REQUIRE(done.size() == 1);
  CHECK(done[0] == "ttyS0: 812 bytes queued");
  CHECK(ports.rearms == 1);
  CHECK(watch.rearmed() == 1);
  // Still stalled: set again kStillMs later, not at every check.
  CHECK(watch.check(at(30), t += 1000, ports).empty());
  CHECK(watch.check(at(30), t += SerialWatch::kStillMs, ports).size() == 1);
  // Flowing again: left alone.
  CHECK(watch.check(at(900), t += 1000, ports).empty());
  CHECK(watch.check(at(1800), t += 5000, ports).empty());
  CHECK(ports.rearms == 2);
  // A port that cannot be opened is not an error, and is not asked at every check.
  struct Closed final : SerialPorts {
    int asked = 0;
    std::optional<Look> look(int) override {
      ++asked;
      return std::nullopt;
    }
  } closed;
  SerialWatch other;
  for (int s = 0; s < 8; ++s) CHECK(other.check(at(5), 1000 * static_cast<std::uint64_t>(s + 1), closed).empty());
  CHECK(closed.asked == 1);
}
