// `immortal ps|lsmod|dmesg` through the introspection agent: what the supervisor takes from it
// (accept_introspection_answer: the part's shape, every field's type and size, nothing else)
// and how it treats an agent that misbehaves (stand-in scripts): the guest is paused only for
// the walk and always resumed, the request always answered, the agent never left running.
#include "control/live_introspection.h"

#include "base/budgets.h"
#include "base/error.h"
#include "base/sealed_memfd.h"
#include "control/control_server.h"

#include "support/fake_agent.h"
#include "support/fake_machine.h"

#include <catch2/catch.hpp>

#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>

using namespace immortal;
using namespace immortal::test;
using vmm::accept_introspection_answer;
using nlohmann::json;

TEST_CASE("introspection answers: the part's shape and nothing else", "[introspection]") {
  json tasks = {{"complete", true},
                {"tasks", {{{"pid", 1}, {"tgid", 1}, {"ppid", 0}, {"comm", "init"}, {"state", "S"}, {"kthread", false},
                            {"address", "0xffff888001234000"}, {"extra", "dropped"}}}},
                {"injected", {{"deep", 1}}}};
  json got = accept_introspection_answer("tasks", tasks.dump());
  CHECK(got["tasks"][0]["comm"] == "init");
  CHECK_FALSE(got["tasks"][0].contains("extra"));
  CHECK_FALSE(got.contains("injected"));
  CHECK_FALSE(got.contains("problem"));

  json modules = {{"complete", false}, {"problem", "the list loops"},
                  {"modules", {{{"name", "lkdtm"}, {"state", "live"}, {"base", "0xffffffffc0000000"}, {"size", 4096}, {"text_size", 4096}}}}};
  CHECK(accept_introspection_answer("modules", modules.dump())["problem"] == "the list loops");

  json log = {{"records", {{{"seq", 1}, {"ts_nsec", 5}, {"level", 6}, {"text", "hello"}}}}, {"skipped", 0}, {"truncated", false},
              {"panic_message", ""}};
  CHECK(accept_introspection_answer("dmesg", log.dump())["records"][0]["text"] == "hello");

  auto refused = [](const std::string& part, const std::string& text, const std::string& why) {
    INFO(part << ": " << text.substr(0, 200));
    try {
      accept_introspection_answer(part, text);
      FAIL("accepted");
    } catch (const Error& e) {
      CHECK_THAT(e.what(), Catch::Contains(why));
    }
  };
  refused("tasks", "not json", "not a JSON object");
  refused("tasks", "[1,2]", "not a JSON object");
  refused("tasks", std::string(100, '[') + std::string(100, ']'), "nested deeper");
  refused("tasks", R"({"complete":true,"tasks":[{"pid":"1"}]})", "pid");
  refused("tasks", R"({"complete":true,"tasks":[7]})", "not an object");
  refused("tasks", R"({"complete":true})", "not a list");
  refused("modules", R"({"complete":true,"modules":[{"name":"a","state":"live","base":"0x0","size":-1,"text_size":0}]})", "size");
  refused("dmesg", json{{"records", {{{"seq", 1}, {"ts_nsec", 5}, {"level", 6}, {"text", std::string(100000, 'x')}}}},
                        {"skipped", 0}, {"truncated", false}, {"panic_message", ""}}.dump(), "text");
  refused("dmesg", std::string(budget::kIntrospectionAnswerBytes + 1, ' '), "larger than");
  refused("other", "{}", "unknown part");
}

namespace {

// The control socket, and requests read from it as the supervisor's loop has them: one
// connection per request, as the CLI makes them.
struct Client {
  std::filesystem::path path = std::filesystem::temp_directory_path() / ("immortal-intro-" + std::to_string(::getpid()) + ".sock");
  vmm::ControlServer server{path.string()};
  std::vector<int> fds;

  ~Client() {
    for (int fd : fds) ::close(fd);
    std::filesystem::remove(path);
  }
  // A new connection asking for part; the request as the server read it.
  vmm::ControlRequest ask(const std::string& part) {
    int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    fds.push_back(fd);
    sockaddr_un a{};
    a.sun_family = AF_UNIX;
    std::snprintf(a.sun_path, sizeof a.sun_path, "%s", path.c_str());
    REQUIRE(::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0);
    std::string line = json{{"command", "introspect"}, {"part", part}}.dump() + "\n";
    REQUIRE(::write(fd, line.data(), line.size()) == static_cast<ssize_t>(line.size()));
    std::optional<vmm::ControlRequest> got;
    for (int i = 0; i < 50 && !got; ++i) {
      std::vector<pollfd> polled;
      server.add_to(polled);
      ::poll(polled.data(), polled.size(), 50);
      server.serve(polled, [&](vmm::ControlRequest r) { got = std::move(r); });
    }
    REQUIRE(got);
    return std::move(*got);
  }
  // The answer on the i-th connection (the last by default).
  json answer(int i = -1) {
    int fd = fds.at(i < 0 ? fds.size() - 1 : static_cast<std::size_t>(i));
    std::string out;
    char c;
    pollfd p{fd, POLLIN, 0};
    while (::poll(&p, 1, 5000) == 1 && ::read(fd, &c, 1) == 1 && c != '\n') out += c;
    return json::parse(out);
  }
};

// Runs the loop's part until every request is answered (or 30 s went by).
void serve_until_done(vmm::LiveIntrospection& intro) {
  auto until = std::chrono::steady_clock::now() + std::chrono::seconds(30);
  while (intro.running() && std::chrono::steady_clock::now() < until) {
    std::vector<pollfd> fds;
    intro.add_to(fds);
    ::poll(fds.data(), fds.size(), 50);
    intro.poll();
  }
  REQUIRE(intro.running() == 0);
}

}  // namespace

TEST_CASE("introspection agents that misbehave: the request is answered, the guest runs again", "[introspection]") {
  FakeAgents agents("introspect");
  FakeMachine machine(1, 1 << 20);
  machine.resume();
  UniqueFd ram = sealed_memfd("immortal-test-ram", 1 << 20);
  machine.ram_file_given = vmm::Machine::RamFile{ram.get(), 1 << 20, {{0, 0, 1 << 20}}};
  std::string profile = agents.dir() + "/profile";
  std::filesystem::create_directories(profile);
  Client client;
  // The doorbell is descriptor 4: 'r' when ready, then one byte ('w') read, 'd' written.
  const std::string ready_and_walk = "printf r >&4; dd bs=1 count=1 <&4 >/dev/null 2>&1; printf d >&4; ";

  struct Case {
    const char* name;
    std::string body;
    std::string failure;  // empty: it answers
  };
  std::vector<Case> cases = {
      {"a well-behaved agent", ready_and_walk + R"(printf '{"complete":true,"tasks":[]}')", ""},
      {"says nonsense on the doorbell", "printf x >&4; sleep 30", "stopped before it found the guest's kernel"},
      {"dies at once, saying why", "echo 'immortal-repair-agent: no BTF' >&2; exit 1", "no BTF"},
      {"never walks (the guest paused meanwhile)", "printf r >&4; sleep 30", "took longer than"},
      {"answers nonsense", ready_and_walk + "printf 'not json'", "answer was refused"},
      {"answers, then fails", ready_and_walk + R"(printf '{"complete":true,"tasks":[]}'; exit 3)", "failed"},
  };
  for (const auto& c : cases) {
    SECTION(c.name) {
      vmm::LiveIntrospection intro(agents.script("agent", c.body), profile, machine);
      auto start = std::chrono::steady_clock::now();
      intro.start(client.ask("tasks"), "tasks");
      serve_until_done(intro);
      json got = client.answer();
      INFO(got.dump());
      if (c.failure.empty()) {
        CHECK(got.value("ok", false));
        CHECK(got["tasks"].empty());
      } else {
        CHECK_FALSE(got.value("ok", true));
        CHECK_THAT(got.value("error", ""), Catch::Contains(c.failure));
      }
      CHECK(machine.state() == vmm::RunState::running);
      // The walk's pause is bounded; nothing waits for the agent's own 30 s.
      CHECK(std::chrono::steady_clock::now() - start < std::chrono::seconds(budget::kIntrospectionPauseMs / 1000 + 5));
    }
  }
}

TEST_CASE("introspection: more requests than the budget are refused at once, and a stopping supervisor answers those it holds",
          "[introspection]") {
  FakeAgents agents("introspect-budget");
  FakeMachine machine(1, 1 << 20);
  UniqueFd ram = sealed_memfd("immortal-test-ram", 1 << 20);
  machine.ram_file_given = vmm::Machine::RamFile{ram.get(), 1 << 20, {{0, 0, 1 << 20}}};
  std::string profile = agents.dir() + "/profile";
  std::filesystem::create_directories(profile);
  Client client;
  {
    vmm::LiveIntrospection intro(agents.script("agent", "sleep 30"), profile, machine);
    for (std::size_t i = 0; i < budget::kIntrospections; ++i) intro.start(client.ask("modules"), "modules");
    intro.start(client.ask("modules"), "modules");
    json refused = client.answer();
    CHECK_THAT(refused.value("error", ""), Catch::Contains("being read already"));
    CHECK(intro.running() == budget::kIntrospections);
  }
  for (std::size_t i = 0; i < budget::kIntrospections; ++i)
    CHECK_THAT(client.answer(static_cast<int>(i)).value("error", ""), Catch::Contains("stopping"));

  SECTION("no guest RAM file: unsupported, said so") {
    machine.ram_file_given.reset();
    vmm::LiveIntrospection intro(agents.script("agent2", "exit 0"), profile, machine);
    intro.start(client.ask("dmesg"), "dmesg");
    CHECK_THAT(client.answer().value("error", ""), Catch::Contains("cannot map"));
  }
}
