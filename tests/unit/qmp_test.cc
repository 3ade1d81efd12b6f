// QMP messages as QEMU 7.2 sends them, and what it never sends.
#include "base/error.h"
#include "qemu/qmp_client.h"

#include <catch2/catch.hpp>

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
