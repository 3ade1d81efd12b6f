// QMP messages as QEMU 7.2 sends them, and what it never sends.
#include "base/error.h"
#include "qemu/qmp_client.h"

#include <catch2/catch.hpp>

#include <sys/socket.h>
#include <unistd.h>

#include <string>

using namespace immortal;
using namespace immortal::qemu;

TEST_CASE("QMP messages are classified", "[qmp]") {
  auto greeting = parse_qmp_message(
      R"({"QMP": {"version": {"qemu": {"micro": 22, "minor": 2, "major": 7}, "package": "Debian"}, "capabilities": ["oob"]}})");
  CHECK(greeting.kind == QmpMessage::Kind::greeting);
  auto ok = parse_qmp_message(R"({"return": {"status": "running", "running": true}, "id": 4})");
  CHECK(ok.kind == QmpMessage::Kind::success);
  CHECK(ok.id == 4u);
  CHECK(ok.value["status"] == "running");
  auto err = parse_qmp_message(R"({"error": {"class": "CommandNotFound", "desc": "The command nope has not been found"}, "id": 5})");
  CHECK(err.kind == QmpMessage::Kind::error);
  CHECK(err.error_class == "CommandNotFound");
  auto ev = parse_qmp_message(
      R"({"timestamp": {"seconds": 1, "microseconds": 2}, "event": "GUEST_PANICKED", "data": {"action": "pause"}})");
  CHECK(ev.kind == QmpMessage::Kind::event);
  CHECK(ev.event_name == "GUEST_PANICKED");
  CHECK(ev.value["action"] == "pause");
}

TEST_CASE("QMP event timestamps are QEMU's clock, kept per event name", "[qmp]") {
  auto ev = parse_qmp_message(R"({"timestamp": {"seconds": 1764932896, "microseconds": 123456}, "event": "STOP"})");
  REQUIRE(ev.time);
  CHECK(std::chrono::duration_cast<std::chrono::microseconds>(ev.time->time_since_epoch()).count() == 1764932896123456);
  // Whatever else QEMU might send is no time at all, never a wrong one.
  for (const char* bad : {R"({"event": "STOP"})", R"({"timestamp": 5, "event": "STOP"})",
                          R"({"timestamp": {"seconds": -1, "microseconds": 0}, "event": "STOP"})",
                          R"({"timestamp": {"seconds": 1, "microseconds": 1000000}, "event": "STOP"})",
                          R"({"timestamp": {"seconds": 1.5, "microseconds": 0}, "event": "STOP"})"})
    CHECK_FALSE(parse_qmp_message(bad).time);

  int fds[2];
  REQUIRE(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds) == 0);
  UniqueFd qemu(fds[1]);
  auto say = [&](const std::string& line) { REQUIRE(::write(qemu.get(), line.data(), line.size()) == static_cast<ssize_t>(line.size())); };
  say(R"({"QMP": {"version": {}, "capabilities": []}})" "\n" R"({"return": {}, "id": 1})" "\n");
  QmpClient client{UniqueFd(fds[0]), Deadline::in(std::chrono::seconds(5))};
  CHECK_FALSE(client.last_event_time("STOP"));
  say(R"({"timestamp": {"seconds": 100, "microseconds": 1}, "event": "STOP"})" "\n"
      R"({"timestamp": {"seconds": 100, "microseconds": 9000}, "event": "RESUME"})" "\n"
      R"({"timestamp": {"seconds": 101, "microseconds": 5}, "event": "STOP"})" "\n");
  auto micros = [](std::optional<WallTime> t) { return std::chrono::duration_cast<std::chrono::microseconds>(t->time_since_epoch()).count(); };
  REQUIRE(client.last_event_time("STOP"));
  CHECK(micros(client.last_event_time("STOP")) == 101000005);
  CHECK(micros(client.last_event_time("RESUME")) == 100009000);
  auto events = client.take_events();  // asking for times takes no event away
  REQUIRE(events.size() == 3);
  CHECK(events[1].name == "RESUME");
  CHECK(micros(events[1].time) == 100009000);
}

TEST_CASE("malformed QMP is an error", "[qmp]") {
  CHECK_THROWS_AS(parse_qmp_message("{"), Error);
  CHECK_THROWS_AS(parse_qmp_message("[]"), Error);
  CHECK_THROWS_AS(parse_qmp_message(R"({"something": 1})"), Error);
  CHECK_THROWS_AS(parse_qmp_message(R"({"return": {}, "id": "x"})"), Error);
}

TEST_CASE("lines are split and over-long lines refused", "[qmp]") {
  LineSplitter lines(16);
  lines.feed("{\"a\":1}\r\n{\"b\"");
  CHECK(lines.next() == std::string("{\"a\":1}"));
  CHECK_FALSE(lines.next().has_value());
  lines.feed(":2}\n");
  CHECK(lines.next() == std::string("{\"b\":2}"));
  lines.feed(std::string(40, 'x'));
  CHECK_THROWS_AS(lines.next(), Error);
}
