// The recovery room's state machine without QEMU: a scripted Machine (tests/support/
// fake_machine.h), a scripted guest agent on a socketpair, a synthetic kernel and a scripted
// repair engine. Each scenario drives the same loop the supervisor runs (machine events in,
// tick, agent messages) and checks what the operator would see: guest state, events, the
// ledger, the machine's registers and resets.
#include "base/error.h"
#include "control/control_server.h"
#include "guest_state.h"
#include "recovery/recovery_coordinator.h"
#include "support/fake_kernel.h"
#include "support/fake_machine.h"
#include "support/scripted_agent.h"

#include <catch2/catch.hpp>

#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <filesystem>
#include <thread>

using namespace immortal;
using namespace immortal::vmm;
using namespace std::chrono_literals;
using nlohmann::json;

namespace {

// Where the synthetic kernel keeps what recovery touches (kernel image at physical 0x100000+).
constexpr std::uint64_t kPanic = 0xffffffff80100000, kCrashKexec = 0xffffffff80100040,
                        kRewind = 0xffffffff80100080, kModules = 0xffffffff80200100;

std::unique_ptr<Kernel> synthetic_kernel(test::VectorMemory& ram) {
  test::map_kernel_image(ram);
  ram.put<std::uint64_t>(kModules - test::kKernelBase, kModules);  // an empty module list
  ram.put<std::uint64_t>(kModules - test::kKernelBase + 8, kModules);
  return Kernel::assemble(ram, KernelLayout{0x1000},
                          SymbolTable::from_kallsyms("ffffffff80100000 T _stext\nffffffff80100000 T panic\n"
                                                     "ffffffff80100040 T crash_kexec\n"
                                                     "ffffffff80100080 T rewind_stack_and_make_dead\n"
                                                     "ffffffff80101000 T _etext\n"
                                                     "0000000000000010 D __preempt_count\n"
                                                     "0000000000000020 D current_task\n"
                                                     "ffffffff80200000 D panic_on_oops\n"
                                                     "ffffffff80200008 D tainted_mask\n"
                                                     "ffffffff80200010 D panic_cpu\n"
                                                     "ffffffff80200018 D kexec_crash_image\n"
                                                     "ffffffff80200100 D modules\n"
                                                     "ffffffff80100100 T oops_end\n"
                                                     "ffffffff80200200 D init_task\n"
                                                     "ffffffff80200800 D __per_cpu_offset\n"
                                                     "ffffffff80200900 D prb\n"
                                                     "ffffffff80300000 R __start_orc_unwind_ip\n"
                                                     "ffffffff80300010 R __stop_orc_unwind_ip\n"
                                                     "ffffffff80310000 R __start_orc_unwind\n"),
                          test::linux_like_types(), "test");
}

struct FixedProfile final : ProfileSource {
  std::shared_ptr<const PackedProfile> profile;
  std::string saved_in = "/nonexistent", error;
  bool busy() const override { return false; }
  std::uint64_t number() const override { return 1; }
  std::shared_ptr<const PackedProfile> current() const override { return profile; }
  const std::string& dir() const override { return saved_in; }
  const std::string& last_error() const override { return error; }
};

struct ScriptedEngine final : RepairEngine {
  std::function<RepairAnswer(const repair::RepairRequest&)> answer;
  repair::HealthyImage image;
  std::string engine_mode = "inline";
  int asked = 0;
  RepairAnswer analyse(const repair::RepairRequest& request) override {
    ++asked;
    return answer(request);
  }
  const repair::HealthyImage* healthy() const override { return &image; }
  void rebuild(const std::string&, const repair::HealthyImage&, const Machine::RamFile&) override {}
  const std::string& mode() const override { return engine_mode; }
};

// The engine's answer for a crash in module "drv" on vCPU 1: kill the task (resume at
// rewind_stack_and_make_dead with SIGKILL), or reboot.
RepairAnswer kill_task_answer(const repair::RepairRequest& request) {
  RepairAnswer a;
  a.ok = true;
  a.mode = "inline";
  a.analysis = {{"kind", "oops"}, {"summary", "NULL pointer dereference in drv"}, {"cpu", 1}, {"module", "drv"}};
  a.facts = {1, "oops", "NULL pointer dereference in drv", "drv", 0, 0, 7, std::nullopt};
  a.plan.resume = true;
  a.plan.vcpu = request.record.vcpu;
  a.plan.reason = "kill-task";
  a.plan.actions.push_back({"kill-task", "pid 7", {}, {{"rip", kPanic, kRewind}, {"rdi", 0, 9}}, {{"pid", 7}}, {}});
  return a;
}

RepairAnswer reboot_answer(const repair::RepairRequest& request) {
  RepairAnswer a = kill_task_answer(request);
  a.plan.resume = false;
  a.plan.actions.clear();
  a.plan.reason = "the driver's state cannot be repaired";
  return a;
}

struct Rig {
  std::string dir = [] {
    auto d = std::filesystem::temp_directory_path() / ("immortal-rooms-" + std::to_string(::getpid()) + "-" +
                                                       std::to_string(Clock::now().time_since_epoch().count()));
    std::filesystem::create_directories(d);
    return d.string();
  }();
  test::FakeMachine machine{2, 4 << 20};
  test::ScriptedAgent guest;
  AgentChannel agent{guest.take_host_end()};
  FixedProfile profiles;
  LiveKernel kernel{machine, profiles, [](const PhysicalMemory& ram, const GuestProfile&) {
                      return synthetic_kernel(const_cast<test::VectorMemory&>(dynamic_cast<const test::VectorMemory&>(ram)));
                    }};
  std::vector<std::string> said, bugs;
  std::optional<std::string> gave_up;
  GuestStatus state{[this](const std::string& bug) { bugs.push_back(bug); }};
  RecoveryPolicy policy = [] {
    RecoveryPolicy p;
    p.verify_window = 0ms;  // the agent's proof only: the synthetic kernel has no tasks to watch
    p.verify_timeout = 3s;
    p.hang_timeout = 60s;
    p.boot_timeout = 2s;
    return p;
  }();
  EventLog events{{dir + "/events.jsonl"}};
  QuarantineList quarantine{dir + "/quarantine.json"};
  CrashLedger ledger;
  CrashBundles bundles{BundleSettings{dir + "/bundles", {}, {}, false, false, "", ""}, "fake", true, events,
                       [this](const std::string& s) { said.push_back(s); },
                       [this](const std::string& name, json fields) { events.append(name, std::move(fields)); }};
  ScriptedEngine engine;
  std::unique_ptr<RecoveryCoordinator> recovery;

  explicit Rig(bool recovery_on = true) {
    policy.enabled = recovery_on;
    GuestProfile p;
    p.boot_id = "boot-1";
    profiles.profile = std::make_shared<const PackedProfile>(p);
    engine.answer = kill_task_answer;
    engine.image.modules.push_back({"drv", 0xffffffffc0001000, 0x2000, 0x100, {{0xffffffffc0001100, 0xffffffffc0003000}}});
    machine.registers[1].gs_base = 0;
  }
  ~Rig() {
    recovery.reset();
    bundles.stop();
    std::error_code ec;
    std::filesystem::remove_all(dir, ec);
  }

  // Boots the guest as the supervisor does: the VM runs, the agent says hello, recovery arms.
  void boot() {
    recovery = std::make_unique<RecoveryCoordinator>(RecoveryParts{
        policy, machine, agent, state, kernel, profiles, ledger, bundles, quarantine, policy.enabled ? &engine : nullptr,
        dir + "/crashes", [this](const std::string& name, json fields) { events.append(name, std::move(fields)); },
        [this](const std::string& s) { said.push_back(s); }, [](std::size_t) { return std::string("  | console\n"); },
        [](const std::string&) {}, [this](const std::string& why) { gave_up = why; }});
    state.change(GuestState::booting, "test");
    machine.resume();
    guest.hello("boot-1");
    guest.heartbeat();
    REQUIRE(run_until([&] { return agent.hello().has_value(); }));
    state.change(GuestState::running, "test");
    REQUIRE(run_until([&] { return !policy.enabled || recovery->interceptor().armed(); }));
  }

  // One turn of the supervisor's loop.
  void turn() {
    std::vector<pollfd> fds{{agent.fd(), POLLIN, 0}};
    for (int fd : machine.event_fds()) fds.push_back({fd, POLLIN, 0});
    ::poll(fds.data(), fds.size(), 10);
    guest.answer();
    if (!agent.closed()) agent.on_readable();
    for (const auto& e : machine.drain_events()) {
      if (e.kind == MachineEvent::Kind::shutdown) state.change(GuestState::shut_off, "test");
      else recovery->on_event(e);
    }
    recovery->tick();
    for (const auto& r : bundles.poll())
      if (r.reason == "crash" && !r.path.empty()) ledger.bundle_written(r.crash, r.path);
  }
  bool run_until(const std::function<bool()>& done, std::chrono::milliseconds limit = 10s) {
    auto deadline = Clock::now() + limit;
    while (!done()) {
      if (Clock::now() > deadline) return false;
      turn();
    }
    return true;
  }
  std::vector<std::string> event_names() const {
    std::vector<std::string> names;
    for (const auto& e : events.recent()) names.push_back(e.value("event", ""));
    return names;
  }
  json last_event(const std::string& name) const {
    json found;
    for (const auto& e : events.recent())
      if (e.value("event", "") == name) found = e;
    return found;
  }
  bool saw(const std::string& name) const {
    auto n = event_names();
    return std::find(n.begin(), n.end(), name) != n.end();
  }
  void crash_on_vcpu1() {
    machine.registers[1].rip = kPanic;
    machine.hit_breakpoint(1, kPanic);
  }
};

}  // namespace

SCENARIO("a crash is repaired, the guest resumed and proven healthy", "[rooms]") {
  Rig rig;
  rig.boot();
  CHECK(rig.machine.breakpoints.count(kPanic));
  CHECK(rig.machine.breakpoints.count(kCrashKexec));
  WHEN("a driver crashes on vCPU 1 and the engine plans to kill its task") {
    rig.crash_on_vcpu1();
    REQUIRE(rig.run_until([&] { return rig.state.is(GuestState::recovering); }));
    THEN("the task is sent to rewind_stack_and_make_dead(SIGKILL) and the guest runs again") {
      CHECK(rig.machine.registers[1].rip == kRewind);
      CHECK(rig.machine.registers[1].rdi == 9);
      CHECK(rig.machine.state() == RunState::running);
      CHECK(rig.engine.asked == 1);
    }
    AND_WHEN("the agent's heartbeat and a new process come") {
      rig.guest.heartbeat();
      REQUIRE(rig.run_until([&] { return rig.state.is(GuestState::running); }));
      THEN("the recovery is counted as verified, with its events in order") {
        CHECK(rig.ledger.recoveries() == 1);
        CHECK(rig.ledger.last()->outcome == "recovered");
        auto names = rig.event_names();
        auto at = [&](const char* n) { return std::find(names.begin(), names.end(), n) - names.begin(); };
        CHECK(at("crash") < at("plan"));
        CHECK(at("plan") < at("resumed"));
        CHECK(at("resumed") < at("recovered"));
        CHECK(rig.bugs.empty());
        CHECK(rig.events.of_crash(1).size() >= 4);
      }
    }
  }
}

SCENARIO("a second crash during the verification window ends it", "[rooms]") {
  Rig rig;
  rig.boot();
  rig.crash_on_vcpu1();
  REQUIRE(rig.run_until([&] { return rig.state.is(GuestState::recovering); }));
  WHEN("the guest crashes again before the agent proved anything") {
    rig.engine.answer = reboot_answer;
    rig.crash_on_vcpu1();
    REQUIRE(rig.run_until([&] { return rig.state.is(GuestState::rebooting); }));
    THEN("the first recovery failed, the second crash rebooted the guest") {
      CHECK(rig.saw("recovery-failed"));
      CHECK(rig.ledger.crashes() == 2);
      CHECK(rig.ledger.recoveries() == 0);
      CHECK(rig.ledger.reboots() == 1);
      CHECK(rig.machine.resets == 1);
      CHECK(rig.ledger.last()->outcome == "rebooted");
    }
  }
}

SCENARIO("a guest that crashes while rebooting is reset again, with back-off", "[rooms]") {
  Rig rig;
  rig.engine.answer = reboot_answer;
  rig.boot();
  rig.crash_on_vcpu1();
  REQUIRE(rig.run_until([&] { return rig.state.is(GuestState::rebooting); }));
  REQUIRE(rig.machine.resets == 1);
  CHECK(rig.machine.breakpoints.empty());
  WHEN("the new boot panics") {
    rig.machine.panic_event();
    REQUIRE(rig.run_until([&] { return rig.saw("boot-failed"); }));
    THEN("it is reset again after a back-off, and a hello ends the reboot") {
      CHECK(rig.last_event("boot-failed").value("reason", "").find("crashed while booting") != std::string::npos);
      CHECK(rig.machine.resets == 1);
      REQUIRE(rig.run_until([&] { return rig.machine.resets == 2; }, 5s));
      rig.guest.hello("boot-2");
      REQUIRE(rig.run_until([&] { return rig.state.is(GuestState::running); }));
      CHECK(rig.saw("rebooted"));
    }
  }
  WHEN("the new boot never says hello") {
    REQUIRE(rig.run_until([&] { return rig.saw("boot-failed"); }, 5s));
    THEN("the boot deadline resets it again") {
      CHECK(rig.last_event("boot-failed").value("reason", "").find("no hello") != std::string::npos);
      CHECK(rig.run_until([&] { return rig.machine.resets == 2; }, 5s));
    }
  }
}

SCENARIO("a panic reported only by pvpanic", "[rooms]") {
  GIVEN("recovery on") {
    Rig rig;
    rig.boot();
    rig.machine.panic_event();
    REQUIRE(rig.run_until([&] { return rig.state.is(GuestState::crashed); }));
    THEN("the guest is frozen after the console grace, then rebooted (it cannot be resumed)") {
      REQUIRE(rig.run_until([&] { return rig.machine.resets == 1; }, 5s));
      CHECK(rig.state.is(GuestState::rebooting));
      CHECK(rig.ledger.last()->decision == "reboot");
      CHECK(rig.ledger.reboots() == 1);
    }
  }
  GIVEN("recovery off") {
    Rig rig(false);
    rig.boot();
    rig.machine.panic_event();
    REQUIRE(rig.run_until([&] { return rig.state.is(GuestState::crashed); }));
    THEN("the guest is left frozen, its bundle written") {
      REQUIRE(rig.run_until([&] { return !rig.ledger.last()->bundle.empty(); }, 5s));
      CHECK(rig.machine.resets == 0);
      CHECK(rig.machine.state() == RunState::paused);
      CHECK(rig.ledger.last()->decision == "freeze");
    }
  }
}

SCENARIO("a guest whose agent falls silent is a hang", "[rooms]") {
  Rig rig;
  rig.policy.hang_timeout = 300ms;
  rig.boot();
  WHEN("no heartbeat comes while the guest runs") {
    REQUIRE(rig.run_until([&] { return rig.saw("hang"); }, 5s));
    THEN("it is inspected and rebooted") {
      CHECK(rig.machine.resets == 1);
      CHECK(rig.ledger.last()->summary.find("hung") != std::string::npos);
    }
  }
  WHEN("the supervisor kept the VM paused longer than the hang timeout") {
    rig.guest.heartbeat();
    rig.run_until([&] { return false; }, 100ms);
    rig.machine.pause();
    std::this_thread::sleep_for(400ms);
    rig.machine.resume();
    rig.run_until([&] { return rig.saw("hang"); }, 200ms);
    THEN("the pause does not count as silence") { CHECK_FALSE(rig.saw("hang")); }
  }
}

SCENARIO("the repair engine cannot answer", "[rooms]") {
  Rig rig;
  rig.engine.answer = [](const repair::RepairRequest&) {
    RepairAnswer a;
    a.error = "no repair engine answered (vm: no answer within 5000 ms; inline: the process died)";
    return a;
  };
  rig.boot();
  rig.crash_on_vcpu1();
  REQUIRE(rig.run_until([&] { return rig.state.is(GuestState::rebooting); }));
  THEN("the guest is rebooted, and the reason says why") {
    CHECK(rig.ledger.last()->reason.find("no answer within 5000 ms") != std::string::npos);
    CHECK(rig.machine.resets == 1);
  }
}

SCENARIO("the VM disappears in the middle of a recovery", "[rooms]") {
  Rig rig;
  rig.engine.answer = [&](const repair::RepairRequest& r) {
    rig.machine.vanish();
    return kill_task_answer(r);
  };
  rig.boot();
  rig.crash_on_vcpu1();
  REQUIRE(rig.run_until([&] { return rig.gave_up.has_value(); }));
  THEN("the instance is told it cannot go on, nothing is resumed") {
    CHECK(rig.gave_up->find("could not be rebooted") != std::string::npos);
    CHECK(rig.machine.resets == 0);
  }
}

SCENARIO("a plan that breaks a rule is not applied", "[rooms]") {
  Rig rig;
  rig.engine.answer = [](const repair::RepairRequest& r) {
    RepairAnswer a = kill_task_answer(r);
    a.plan.actions[0].registers.push_back({"cr3", 0, 0x1000});  // not a register a repair may change
    return a;
  };
  rig.boot();
  rig.crash_on_vcpu1();
  REQUIRE(rig.run_until([&] { return rig.state.is(GuestState::rebooting); }));
  CHECK(rig.ledger.last()->reason.find("failed validation") != std::string::npos);
  CHECK(rig.machine.registers[1].rip == kPanic);  // untouched
}

TEST_CASE("guest state: moves outside the table are reported as bugs, never silent", "[rooms]") {
  std::vector<std::string> bugs;
  GuestStatus s([&](const std::string& b) { bugs.push_back(b); });
  s.change(GuestState::booting, "t");
  s.change(GuestState::running, "t");
  s.change(GuestState::crashed, "t");
  s.change(GuestState::recovering, "t");
  s.change(GuestState::running, "t");
  CHECK(bugs.empty());
  s.change(GuestState::booting, "a test");
  REQUIRE(bugs.size() == 1);
  CHECK(bugs[0].find("running to booting") != std::string::npos);
  CHECK(s.is(GuestState::booting));
  CHECK(transition_allowed(GuestState::rebooting, GuestState::shut_off));
  CHECK_FALSE(transition_allowed(GuestState::shut_off, GuestState::running));
  CHECK(std::string(to_string(GuestState::shut_off)) == "shut off");
}

namespace {
int connect_to(const std::string& path) {
  int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_un a{};
  a.sun_family = AF_UNIX;
  std::snprintf(a.sun_path, sizeof a.sun_path, "%s", path.c_str());
  REQUIRE(::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0);
  return fd;
}
std::string read_line(int fd) {
  std::string out;
  char c;
  pollfd p{fd, POLLIN, 0};
  while (::poll(&p, 1, 2000) == 1 && ::read(fd, &c, 1) == 1 && c != '\n') out += c;
  return out;
}
}  // namespace

SCENARIO("control requests are answered exactly once, and only on their own connection", "[rooms]") {
  auto path = std::filesystem::temp_directory_path() / ("immortal-ctl-" + std::to_string(::getpid()) + ".sock");
  ControlServer server(path.string());
  std::vector<ControlRequest> held;
  auto serve = [&] {
    std::vector<pollfd> fds;
    server.add_to(fds);
    ::poll(fds.data(), fds.size(), 50);
    server.serve(fds, [&](ControlRequest r) { held.push_back(std::move(r)); });
  };
  auto send = [](int fd, const std::string& line) { REQUIRE(::write(fd, line.data(), line.size()) == static_cast<ssize_t>(line.size())); };
  int a = connect_to(path.string());
  serve();
  send(a, R"({"command":"status"})" "\n");
  for (int i = 0; i < 10 && held.empty(); ++i) serve();
  REQUIRE(held.size() == 1);
  WHEN("a request is answered twice") {
    held[0].reply({{"first", true}});
    held[0].reply({{"second", true}});
    THEN("only the first answer is sent") {
      CHECK(json::parse(read_line(a)).value("first", false));
      CHECK(read_line(a).empty());
    }
  }
  WHEN("its client went away and a new one connected before the late answer") {
    ::close(a);
    a = -1;
    serve();
    int b = connect_to(path.string());
    serve();
    held[0].reply({{"late", true}});
    send(b, R"({"command":"events"})" "\n");
    for (int i = 0; i < 10 && held.size() < 2; ++i) serve();
    THEN("the new client gets only its own answer") {
      REQUIRE(held.size() == 2);
      held[1].reply({{"mine", true}});
      json got = json::parse(read_line(b));
      CHECK(got.value("mine", false));
      CHECK_FALSE(got.contains("late"));
    }
    ::close(b);
  }
  WHEN("a request is dropped without an answer") {
    held.clear();
    THEN("its client is told so instead of waiting for ever") {
      json got = json::parse(read_line(a));
      CHECK(got.value("ok", true) == false);
      CHECK(got.value("error", "").find("without an answer") != std::string::npos);
    }
  }
  if (a >= 0) ::close(a);
  std::filesystem::remove(path);
}
