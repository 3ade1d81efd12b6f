// Recovery, end to end: one guest under `immortal run` (recovery on) takes every class of the
// fault catalogue in turn and the outcome docs/fault-catalogue.md documents happens. The judges
// are the guest's own view (its boot id, its kernel log, a workload's output file, what a second
// user of the driver gets) and the supervisor's status and event log.
#include "instance_json.h"
#include "fault_catalogue.h"

#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>

#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <sstream>
#include <thread>
#include <vector>

using namespace immortal::test;
using namespace std::chrono_literals;
using nlohmann::json;

namespace {

// Starts the workload: a sequence number appended to a file every 5 ms.
void start_workload(const std::string& name) {
  auto r = guest_sh(name, "rm -f /tmp/wl; immortal-workload /tmp/wl 5000 </dev/null >/dev/null 2>&1 & echo $! > /tmp/wl.pid");
  REQUIRE(r.status == 0);
}

// Stops it (it must still be alive) and checks its file holds 1..N with no gap or duplicate.
void check_workload(const std::string& name, std::size_t at_least) {
  auto r = guest_sh(name, "kill $(cat /tmp/wl.pid) && sleep 0.1 && cat /tmp/wl");
  INFO("workload stop: " << r.err);
  REQUIRE(r.status == 0);  // kill succeeded: the workload was still running
  std::istringstream in(r.out);
  std::size_t expected = 1, n = 0;
  std::string line;
  bool ordered = true;
  while (std::getline(in, line)) {
    if (line.empty()) continue;  // the last line may be cut by the kill
    if (std::to_string(expected) != line) ordered = false;
    ++expected;
    ++n;
  }
  INFO("workload records: " << n);
  CHECK(ordered);
  CHECK(n >= at_least);
}

std::string fmt_victim_killed(int pid) { return "spawned pid " + std::to_string(pid) + " killed by signal 9"; }
std::string fmt_victim_exited(int pid) { return "spawned pid " + std::to_string(pid) + " exited with status 0"; }

std::string dmesg(const std::string& name) { return guest_sh(name, "dmesg").out; }

// Classes whose crash happens in the victim process itself (the others crash in a timer or a
// work item the victim only arms; the victim then exits normally).
bool crashes_in_victim(const std::string& cls) { return cls != "timer" && cls != "workqueue"; }

json events_of(const std::string& name) {
  json out = json::array();
  std::istringstream in(run_cli({"events", name, "--json"}, 20s).out);
  for (std::string line; std::getline(in, line);)
    if (auto j = json::parse(line, nullptr, false); !j.is_discarded()) out.push_back(j);
  return out;
}

json last_event(const std::string& name, const std::string& kind) {
  json last;
  for (const auto& e : events_of(name))
    if (e.value("event", "") == kind) last = e;
  return last;
}

// The repair workers of an instance are ready (the repair VM boots after each profile).
bool repair_ready(const std::string& name, const std::string& mode) {
  return status_json(name).value("repair", json::object()).value(mode, json::object()).value("state", "") == "ready";
}

struct RecoveryGuest {
  std::string name;
  std::string boot_id;
};

RecoveryGuest& recovery_guest() {
  static RecoveryGuest g;
  if (!g.name.empty()) return g;
  g.name = unique_name("recover");
  // Every crash leaves a bundle: keep few of the ~35 this guest makes.
  // The repair VM analyses every crash; the inline engine does too (--repair-cross-check), and
  // each crash's event says whether both produced the same analysis and plan.
  // A short watch window after each recovery: this guest takes some thirty crashes in a row
  // (the default 10 s is exercised by the real-drivers guest).
  auto run = run_cli({"run", "--name", g.name, "--detach", "--recovery-limit", "100/3600", "--bundle-keep", "2",
                      "--repair", "vm", "--repair-cross-check", "--verify-window", "2"});
  INFO(run.err);
  REQUIRE(run.status == 0);
  REQUIRE(wait_until([&] { return recovery_count(status_json(g.name), "crashes") == 0 &&
                                  status_json(g.name).value("recovery_state", json::object()).value("armed", false); }, 60s));
  g.boot_id = status_json(g.name).value("boot_id", "");
  REQUIRE(!g.boot_id.empty());
  return g;
}

// Both engines are up (after a reboot the repair VM boots again with the new profile).
void wait_for_repair_engines(const std::string& name) {
  REQUIRE(wait_until([&] { return repair_ready(name, "vm") && repair_ready(name, "inline"); }, 120s));
}

// The last crash was analysed in the repair VM, and the inline engine agreed to the byte.
void check_engines_agreed(const std::string& name) {
  json crash = last_event(name, "crash");
  INFO("crash event: " << crash.dump(1).substr(0, 3000));
  CHECK(crash["repair"].value("mode", "") == "vm");
  CHECK(crash["repair"]["cross_check"].value("mode", "") == "inline");
  CHECK(crash["repair"]["cross_check"].value("identical", json()) == json(true));
}

// The kernel printed the class's own report before it would have panicked: the part of its
// catalogued console signature up to "Kernel panic" (where the stock kernel goes on to panic,
// recovery has stepped in), in order, after the victim's announcement of this injection. How
// each class ends on a stock kernel is fault_injection_test.cc's.
void check_kernel_report(const std::string& name, const std::string& cls) {
  const auto* fault = immortal::vmm::find_fault_class(cls);
  REQUIRE(fault);
  std::vector<std::string> expected;
  for (const char* line : fault->console_signature) {
    if (std::string(line).starts_with("Kernel panic")) break;
    expected.emplace_back(line);
  }
  if (expected.empty()) return;  // the driver's own panic(): its one line is the panic recovery stops
  std::string console;
  std::vector<std::string> missing;
  bool seen = wait_until([&] {
    console = read_file(test_runtime_root() + "/" + name + "/console.log");
    return (missing = missing_after_injection(console, cls, expected)).empty();
  }, 20s);
  INFO("not found in order: " << (missing.empty() ? std::string() : missing.front()));
  INFO("console:\n" << console.substr(console.size() > 6000 ? console.size() - 6000 : 0));
  CHECK(seen);
}

void expect_recovered(const std::string& cls, bool quarantined = true) {
  auto& g = recovery_guest();
  INFO("class " << cls);
  wait_for_repair_engines(g.name);
  json before = status_json(g.name);
  REQUIRE(before.value("state", "") == "running");
  REQUIRE(run_cli({"unquarantine", g.name, "--all"}).status == 0);
  start_workload(g.name);
  int victim = inject(g.name, cls);
  bool recovered = wait_until([&] { return recovery_count(status_json(g.name), "recovered") > recovery_count(before, "recovered") ||
                                           recovery_count(status_json(g.name), "reboots") > recovery_count(before, "reboots"); }, 60s);
  json after = status_json(g.name);
  // On one line: a failure's own messages, printed after this one, stay within CI's excerpt.
  INFO("status: " << after.dump().substr(0, 1500));
  REQUIRE(recovered);
  CHECK(recovery_count(after, "reboots") == recovery_count(before, "reboots"));
  CHECK(after.value("state", "") == "running");
  CHECK(after.value("boot_id", "") == g.boot_id);  // no reboot

  check_engines_agreed(g.name);
  check_kernel_report(g.name, cls);

  // The victim died of SIGKILL, as the kernel's own oops handling would have killed it.
  std::string expected = crashes_in_victim(cls) ? fmt_victim_killed(victim) : fmt_victim_exited(victim);
  CHECK(wait_until([&] { return dmesg(g.name).find(expected) != std::string::npos; }, 10s));

  // The rest of the guest went on: the workload has no gap, new processes run.
  check_workload(g.name, 20);

  // A second user of the driver: an error or nothing, never a hang or another crash.
  if (!quarantined) {
    // Its code was restored, not quarantined: the driver works.
    CHECK(guest_sh(g.name, "echo ping > /dev/immortal-fault").status == 0);
  } else if (crashes_in_victim(cls)) {
    auto second = guest_sh(g.name, "echo ping > /dev/immortal-fault");
    CHECK(second.status != 0);
    CHECK_THAT(second.err, Catch::Contains("Input/output error"));
  } else {
    auto again = guest_sh(g.name, "echo " + cls + " > /dev/immortal-fault && sleep 1");
    CHECK(again.status == 0);  // the callback is quarantined: armed again, it does nothing
  }
  // Its locks are free: a reader takes both and returns at once.
  auto reader = guest_sh(g.name, "timeout 10 cat /dev/immortal-fault");
  CHECK(reader.status == 0);
  CHECK_THAT(reader.out, Catch::Contains("immortal_fault counter"));
  json end = status_json(g.name);
  CHECK(recovery_count(end, "crashes") == recovery_count(after, "crashes"));
  CHECK(end.value("boot_id", "") == g.boot_id);
}

}  // namespace

#define RECOVERED_TEST(cls)                                                                                    \
  TEST_CASE("recovery: " cls " is recovered in place (boot id kept, victim SIGKILLed, workload unbroken)", \
            "[integration][recovery]") { expect_recovered(cls); }

RECOVERED_TEST("null-deref")
RECOVERED_TEST("bug")
RECOVERED_TEST("panic")
RECOVERED_TEST("gpf")
RECOVERED_TEST("divide")
RECOVERED_TEST("spinlock-held")
RECOVERED_TEST("mutex-held")
RECOVERED_TEST("warn")
RECOVERED_TEST("timer")
RECOVERED_TEST("workqueue")

TEST_CASE("recovery: the repair VM runs the small kernel built for it, and gives back its free pages as zeros",
          "[integration][recovery]") {
  auto& g = recovery_guest();
  wait_for_repair_engines(g.name);
  json vm = status_json(g.name)["repair"]["vm"];
  INFO(vm.dump(1));
  // scripts/test builds it (scripts/build-repair-kernel) and names it; `run` finds it beside its binary otherwise.
  const char* built = std::getenv("IMMORTAL_REPAIR_KERNEL");
  REQUIRE(built);
  CHECK(vm.value("kernel", "") == built);
  // It cannot describe its own page classes (no symbols or BTF in it), so none are read; its
  // kernel zeroes what it frees (init_on_free) and those pages go back as all-zero ones.
  // A crash that resumes the VM while it is being trimmed makes that pass give up ("skipped");
  // it runs again 2 s later.
  auto trimmed = [&] {
    return status_json(g.name)["repair"]["vm"].value("free_pages_given_back", json::object()).value("given_back_bytes", std::uint64_t{0});
  };
  wait_until([&] { return trimmed() >= (1u << 20); }, 60s);
  json trim = status_json(g.name)["repair"]["vm"]["free_pages_given_back"];
  INFO(trim.dump());
  CHECK_FALSE(trim.contains("error"));
  CHECK(trim.contains("classes_unread"));
  CHECK(trim.value("given_back_bytes", std::uint64_t{0}) >= (1u << 20));
  // The crashes of the cases above were analysed there, and the inline engine agreed byte for byte.
  expect_recovered("null-deref");
  expect_recovered("null-deref");
  // Each by a fresh process, forked in the VM from the loaded engine ahead of the crash
  // (agent/repair_agent.cc): never pid 1 itself, never the same process twice.
  std::vector<json> analysed;
  for (const json& e : events_of(g.name))
    if (e.value("event", "") == "crash" && e.value("repair", json::object()).value("mode", "") == "vm") analysed.push_back(e["repair"]);
  REQUIRE(analysed.size() >= 2);
  json first = analysed[analysed.size() - 2].value("process", json::object()), second = analysed.back().value("process", json::object());
  INFO(first.dump() << " then " << second.dump());
  CHECK(first.value("per_crash", false));
  CHECK(second.value("per_crash", false));
  CHECK(first.value("pid", 0) > 1);
  CHECK(second.value("pid", 0) > 1);
  CHECK(first.value("pid", 0) != second.value("pid", 0));
  // Each from the crash's snapshot in the host pool's arena (the bundle's copy, taken before the
  // request), with the kernel's unchanged code read from the healthy copy: the inline engine,
  // which read the stopped guest's RAM, agreed byte for byte (check_engines_agreed above).
  for (const json& a : {analysed[analysed.size() - 2], analysed.back()}) {
    json memory = a.value("memory", json::object());
    INFO(memory.dump());
    CHECK(memory.value("read", "") == "snapshot");
    CHECK((memory.value("arena", -1) == 0 || memory.value("arena", -1) == 1));
    CHECK(memory.value("pages", 0) > 1000);
    CHECK(memory.value("code_pages_from_healthy_copy", 0) > 1000);
  }
}

TEST_CASE("recovery: quarantine is recorded and unquarantine restores the driver", "[integration][recovery]") {
  auto& g = recovery_guest();
  REQUIRE(run_cli({"unquarantine", g.name, "--all"}).status == 0);
  inject(g.name, "null-deref");
  REQUIRE(wait_until([&] { json s = status_json(g.name);
                           return !s["recovery_state"]["quarantined"].empty() && s.value("state", "") == "running"; }, 60s));
  json q = status_json(g.name)["recovery_state"]["quarantined"];
  CHECK(q[0].value("function", "") == "immortal_fault_write");
  CHECK(guest_sh(g.name, "echo ping > /dev/immortal-fault").status != 0);
  auto bad = run_cli({"unquarantine", g.name, "no_such_function"});
  CHECK(bad.status == 2);
  // A plan that pinned the module (an extra reference, so it cannot be unloaded while its
  // functions are patched) has the pin dropped with its last function.
  bool pinned = last_event(g.name, "plan").dump().find("pin-module") != std::string::npos;
  auto refs = [&] { return std::atoi(guest_sh(g.name, "cat /sys/module/immortal_fault/refcnt").out.c_str()); };
  int refs_before = refs();
  auto r = run_cli({"unquarantine", g.name, "immortal_fault_write"});
  CHECK(r.status == 0);
  CHECK_THAT(r.out, Catch::Contains("restored"));
  if (pinned) {
    CHECK_THAT(r.out, Catch::Contains("module immortal_fault: unpinned"));
    CHECK(refs() == refs_before - 1);
  }
  CHECK(status_json(g.name)["recovery_state"]["quarantined"].empty());
  CHECK(guest_sh(g.name, "echo ping > /dev/immortal-fault").status == 0);  // the driver works again
}

// The repair engine finds the bytes that differ from the healthy copy and restores them.
TEST_CASE("recovery: text-corruption is recovered by restoring the code from the healthy copy", "[integration][recovery]") {
  expect_recovered("text-corruption", /*quarantined=*/false);
  json plan = last_event(recovery_guest().name, "plan")["plan"];
  INFO(plan.dump(1));
  REQUIRE(!plan["actions"].empty());
  CHECK(plan["actions"][0].value("action", "") == "restore-code");
  CHECK_THAT(plan["actions"][0]["detail"].dump(), Catch::Contains("immortal_fault_text_target"));
}

// A dead repair VM: the crash is analysed by the inline fallback, and the VM comes back.
TEST_CASE("recovery: with the repair VM killed, the inline fallback recovers and says so", "[integration][recovery]") {
  auto& g = recovery_guest();
  wait_for_repair_engines(g.name);
  int vm_pid = status_json(g.name)["repair"]["vm"].value("pid", 0);
  REQUIRE(vm_pid > 0);
  REQUIRE(run_cli({"unquarantine", g.name, "--all"}).status == 0);
  ::kill(vm_pid, SIGKILL);
  REQUIRE(wait_until([&] { return !repair_ready(g.name, "vm"); }, 10s));
  std::uint64_t before = recovery_count(status_json(g.name), "recovered");
  inject(g.name, "null-deref");
  REQUIRE(wait_until([&] { return recovery_count(status_json(g.name), "recovered") == before + 1; }, 60s));
  json crash = last_event(g.name, "crash");
  INFO(crash.dump(1).substr(0, 2000));
  CHECK(crash["repair"].value("mode", "") == "inline");
  CHECK_THAT(crash["repair"]["fallbacks"].dump(), Catch::Contains("vm"));
  CHECK(last_event(g.name, "repair-fallback").value("to", "") == "inline");
  CHECK(!last_event(g.name, "repair-failed").is_null());
  // The repair VM is started again (after a back-off).
  CHECK(wait_until([&] { return repair_ready(g.name, "vm"); }, 120s));
  REQUIRE(run_cli({"unquarantine", g.name, "--all"}).status == 0);
}

// List debugging refused the corrupt list_del before changing anything: blamed on the driver.
TEST_CASE("recovery: list-corruption, stopped by list debugging on the driver's behalf, is recovered",
          "[integration][recovery]") { expect_recovered("list-corruption"); }
// The recursion ran into the stack's guard page: the double fault's NMI-like context is left
// (ct_nmi_exit()) and the task ended from the double fault's own stack.
TEST_CASE("recovery: stack-overflow, caught by the double fault, is recovered", "[integration][recovery]") {
  expect_recovered("stack-overflow");
}
// A task spinning in the driver with preemption disabled: the watchdog's timer interrupt panics;
// the task is ended through that interrupt's saved registers.
TEST_CASE("recovery: softlockup, caught by the watchdog's timer interrupt, is recovered", "[integration][recovery]") {
  expect_recovered("softlockup");
}
// A task asleep in the driver for ever: khungtaskd panics; the task is woken into its death
// (schedule_timeout()'s timer unlinked first) and khungtaskd goes on.
TEST_CASE("recovery: hung-task, found by khungtaskd, is recovered", "[integration][recovery]") { expect_recovered("hung-task"); }

TEST_CASE("recovery: the limit on recoveries turns the next crash into a reboot", "[integration][recovery]") {
  std::string name = unique_name("limit");
  auto run = run_cli({"run", "--name", name, "--detach", "--recovery-limit", "1/600", "--no-recover", "warn"});
  INFO(run.err);
  REQUIRE(run.status == 0);
  REQUIRE(wait_until([&] { return status_json(name).value("recovery_state", json::object()).value("armed", false); }, 60s));
  std::string boot = status_json(name).value("boot_id", "");
  // A disabled kind reboots at once.
  inject(name, "warn");
  REQUIRE(wait_until([&] { json s = status_json(name); return recovery_count(s, "reboots") == 1 && s.value("state", "") == "running" &&
                                                         s["recovery_state"].value("armed", false); }, 120s));
  CHECK_THAT(run_cli({"events", name}).out, Catch::Contains("disabled by policy"));
  inject(name, "null-deref");
  REQUIRE(wait_until([&] { return recovery_count(status_json(name), "recovered") == 1; }, 60s));
  REQUIRE(run_cli({"unquarantine", name, "--all"}).status == 0);
  inject(name, "null-deref");
  REQUIRE(wait_until([&] { json s = status_json(name); return recovery_count(s, "reboots") == 2 && s.value("state", "") == "running"; }, 120s));
  CHECK_THAT(run_cli({"events", name}).out, Catch::Contains("recovery limit is reached"));
  CHECK(status_json(name).value("boot_id", "") != boot);
  CHECK(run_cli({"stop", name, "--force"}).status == 0);
}

TEST_CASE("recovery: a guest whose agent falls silent is inspected and rebooted (hang detector)", "[integration][recovery]") {
  std::string name = unique_name("hang");
  auto run = run_cli({"run", "--name", name, "--detach", "--hang-timeout", "10"});
  INFO(run.err);
  REQUIRE(run.status == 0);
  std::string boot = status_json(name).value("boot_id", "");
  // Stop the agent from inside (after exec has answered): heartbeats end, the guest runs on.
  REQUIRE(guest_sh(name, "(sleep 1; kill -STOP $(pidof immortal-agent)) </dev/null >/dev/null 2>&1 &").status == 0);
  bool rebooted = wait_until([&] { json s = status_json(name);
                                   return s.value("state", "") == "running" && s.value("boot_id", boot) != boot; }, 120s);
  CHECK(rebooted);
  auto events = run_cli({"events", name, "--json"}).out;
  CHECK_THAT(events, Catch::Contains("\"event\":\"hang\"") && Catch::Contains("no heartbeat"));
  CHECK_THAT(events, Catch::Contains("\"event\":\"rebooted\""));
  // The hung guest's state is kept in a bundle (its memory copied before the reboot).
  CHECK(wait_until([&] { return read_file(test_runtime_root() + "/" + name + "/events.jsonl").find("\"event\":\"bundle\"") != std::string::npos; }, 60s));
  auto hang_bundle = run_cli({"diag", status_json(name)["last_crash"].value("bundle", "")});
  INFO(hang_bundle.err);
  CHECK(hang_bundle.status == 0);
  CHECK_THAT(hang_bundle.out, Catch::Contains("caught by hang") && Catch::Contains("outcome: rebooted"));
  CHECK(run_cli({"stop", name, "--force"}).status == 0);
}

// QEMU's dump-guest-memory stops the guest for as long as it writes (half a minute at 8 GiB, while
// the supervisor waits on it). That is not a hang: the hang clock starts again when the guest
// runs again (an 8 GiB guest was rebooted as hung right after `immortal dump` before). A dump
// into a pipe that is drained only after more than the hang timeout makes one that long here.
TEST_CASE("recovery: a dump that stops the guest for longer than the hang timeout is not a hang", "[integration][recovery]") {
  std::string name = unique_name("slowdump");
  auto run = run_cli({"run", "--name", name, "--detach", "--hang-timeout", "3"});
  INFO(run.err);
  REQUIRE(run.status == 0);
  std::string boot = status_json(name).value("boot_id", "");
  std::string fifo = scratch_dir() + "/" + name + ".fifo";
  REQUIRE(::mkfifo(fifo.c_str(), 0600) == 0);
  std::uint64_t drained = 0;
  std::thread reader([&] {
    int fd = ::open(fifo.c_str(), O_RDONLY | O_CLOEXEC);  // meets the supervisor's open of its end
    if (fd < 0) return;
    std::this_thread::sleep_for(7s);  // the slow destination: QEMU blocks on the full pipe, the guest stopped
    std::vector<char> buffer(1 << 20);
    for (ssize_t n; (n = ::read(fd, buffer.data(), buffer.size())) > 0;) drained += static_cast<std::uint64_t>(n);
    ::close(fd);
  });
  auto dumped = run_cli({"dump", name, fifo}, 180s);
  reader.join();
  INFO(dumped.out << dumped.err);
  REQUIRE(dumped.status == 0);
  CHECK(drained > 256ull << 20);  // the guest's RAM went through the pipe
  // Longer than the hang timeout after the dump: the guest runs on, the same boot, no hang.
  bool steady = true;
  wait_until([&] {
    json s = status_json(name);
    steady = steady && s.value("state", "") == "running" && s.value("boot_id", "") == boot;
    return !steady;
  }, 6s);
  CHECK(steady);
  CHECK(guest_sh(name, "echo alive").out == "alive\n");
  CHECK_THAT(run_cli({"events", name, "--json"}).out, !Catch::Contains("\"event\":\"hang\""));
  CHECK(run_cli({"stop", name, "--force"}).status == 0);
}

// An oops printed on the console while a process writes to the same serial port can leave the
// UART's transmit interrupt off while Linux's 8250 driver believes it on (docs/recovery.md,
// "Serial consoles after an oops"): every writer of the port then blocks for ever, with or
// without our recovery. That race is rare, so its end state is made here directly: the
// interrupt enable register written through /dev/port in the middle of a long write. The guest
// agent must notice the stalled port and set it going again.
TEST_CASE("recovery: a serial port left with its transmit interrupt off is set going again by the guest agent",
          "[integration][recovery]") {
  auto& g = recovery_guest();
  std::string console = status_json(g.name).value("console_log", "");
  REQUIRE_FALSE(console.empty());
  auto console_bytes = [&] { return std::filesystem::file_size(console); };
  auto rearms = [&] {
    std::size_t n = 0;
    for (const auto& e : events_of(g.name)) n += e.value("event", "") == "serial-rearmed";
    return n;
  };
  std::size_t rearms_before = rearms();
  auto before = console_bytes();
  // A writer that keeps the port's buffer full (the driver's transmit interrupt is on while it
  // has bytes to send; started again whenever it has written everything), and IER written
  // without that bit until the port's tx count stands still while the writer still waits: a
  // write that lands while the driver had the interrupt off makes no stall, and a writer that
  // has finished stands still without one (a full run here saw that: the whole burst was out first).
  constexpr std::uintmax_t kBytes = 1500000;
  auto r = guest_sh(g.name,
                    "yes immortal-serial-stall-check | head -c 1500000 > /tmp/serial-burst; "
                    "cat /tmp/serial-burst > /dev/ttyS0 & w=$!; n=1; "
                    "tx() { sed -n 's/^0:.* tx:\\([0-9]*\\).*/\\1/p' /proc/tty/driver/serial; }; "
                    "i=0; while [ $i -lt 40 ]; do "
                    "kill -0 $w 2>/dev/null || { cat /tmp/serial-burst > /dev/ttyS0 & w=$!; n=$((n+1)); }; "
                    "printf '\\005' | dd of=/dev/port bs=1 seek=1017 count=1 conv=notrunc 2>/dev/null; "
                    "a=$(tx); sleep 0.3; b=$(tx); "
                    "[ \"$a\" = \"$b\" ] && kill -0 $w 2>/dev/null && { echo \"stalled at $b, writers $n\"; exit 0; }; "
                    "i=$((i+1)); done; "
                    "echo never stalled; exit 1");
  INFO("guest: " << r.out << r.err);
  REQUIRE(r.status == 0);
  // Every writer started must get its bytes out once the port goes again.
  std::uintmax_t writers = 1;
  if (auto at = r.out.find("writers "); at != std::string::npos) writers = std::stoul(r.out.substr(at + 8));
  // The port had stalled (the agent looks only at a port whose output waits) and was set going…
  bool rearmed = wait_until([&] { return rearms() > rearms_before; }, 60s);
  if (!rearmed) {
    auto port = guest_sh(g.name, "grep '^0:' /proc/tty/driver/serial; dd if=/dev/port bs=1 skip=1017 count=1 2>/dev/null | od -An -tx1");
    INFO("port now: " << port.out << "; agent heartbeats " << status_json(g.name)["agent"].dump());
    CHECK(rearmed);
  }
  // … and the write went on to its end.
  CHECK(wait_until([&] { return console_bytes() >= before + writers * kBytes; }, 90s));
  CHECK(guest_sh(g.name, "echo console-still-writable > /dev/ttyS0").status == 0);
}

TEST_CASE("recovery: the shared recovery guest stops cleanly", "[integration][recovery]") {
  auto& g = recovery_guest();
  CHECK(run_cli({"stop", g.name}).status == 0);
  CHECK(wait_until([&] { return qemu_processes(g.name).empty(); }, 10s));
}

TEST_CASE("recovery: a driver loaded after the profile was taken crashes at once: its process is still killed",
          "[integration][recovery]") {
  std::string name = unique_name("unprofiled");
  auto run = run_cli({"run", "--name", name, "--detach"});
  INFO(run.err);
  REQUIRE(run.status == 0);
  std::string boot = status_json(name).value("boot_id", "");
  // The same faulty code under a module name the profile does not have, crashed before the
  // supervisor can collect a new profile: this shell is the victim.
  auto r = guest_sh(name, "rmmod immortal_fault && insmod /lib/modules/immortal_fault_twin.ko && "
                          "printf null-deref > /dev/immortal-fault");
  INFO(r.err);
  CHECK(r.status == 128 + 9);  // killed by SIGKILL
  REQUIRE(wait_until([&] { json s = status_json(name); return recovery_count(s, "recovered") == 1 && s.value("state", "") == "running"; }, 60s));
  json s = status_json(name);
  CHECK(s.value("boot_id", "") == boot);
  CHECK_THAT(s["last_crash"].value("summary", ""), Catch::Contains("immortal_fault_twin"));
  CHECK_THAT(run_cli({"events", name, "--json"}).out, Catch::Contains("loaded after the guest profile"));
  // Its symbols came from its own table in guest memory: the crashing entry is quarantined like
  // any other, and its read entry still works.
  CHECK_THAT(run_cli({"events", name, "--json"}).out, Catch::Contains("immortal_fault_write"));
  CHECK(guest_sh(name, "timeout 10 cat /dev/immortal-fault").status == 0);
  // The module change brings a new profile (numbered, not told apart by its second), and
  // interception is armed again from it.
  auto profile_number = [&] { return status_json(name).value("profile", json::object()).value("number", 0); };
  CHECK(wait_until([&] { return profile_number() >= 2; }, 60s));
  CHECK(wait_until([&] {
    auto events = run_cli({"events", name, "--json"}).out;
    std::size_t armed = 0;
    for (auto at = events.find("\"event\":\"armed\""); at != std::string::npos; at = events.find("\"event\":\"armed\"", at + 1)) ++armed;
    return armed >= 2;
  }, 60s));

  // A driver that crashes in its own init function, while insmod loads it: insmod dies, as the
  // kernel's oops kill would have done, and the guest goes on (the module stays "Loading").
  auto load = guest_sh(name, "rmmod immortal_fault_twin && insmod /lib/modules/immortal_fault_twin.ko fault_on_load=1");
  INFO(load.err);
  CHECK(load.status == 128 + 9);
  REQUIRE(wait_until([&] { json t = status_json(name); return recovery_count(t, "recovered") == 2 && t.value("state", "") == "running"; }, 60s));
  CHECK_THAT(status_json(name)["last_crash"].value("summary", ""), Catch::Contains("init_module") &&
                                                                   Catch::Contains("[immortal_fault_twin]"));
  CHECK(status_json(name).value("boot_id", "") == boot);
  CHECK(guest_sh(name, "true").status == 0);
  CHECK(run_cli({"stop", name, "--force"}).status == 0);
}
