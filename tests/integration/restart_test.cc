// A supervisor restart keeps the guest (issue 15): SIGKILL, a crash while nobody watches,
// `immortal upgrade` both ways, and a VM that ends under its supervisor.
#include "harness.h"
#include "instance_json.h"

#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>

#include <signal.h>
#include <sys/wait.h>

#include <sstream>

using namespace immortal::test;
using namespace std::chrono_literals;
using nlohmann::json;

namespace {


bool armed(const std::string& name) {
  json s = status_json(name);
  return s.value("state", "") == "running" && s.value("recovery_state", json::object()).value("armed", false);
}

// Injects a NULL dereference through the fault driver and waits for its recovery.
void crash_and_recover(const std::string& name) {
  std::uint64_t before = recovery_count(status_json(name), "recovered");
  REQUIRE(run_cli({"unquarantine", name, "--all"}).status == 0);
  inject(name, "null-deref");
  REQUIRE(wait_until([&] { json s = status_json(name); return recovery_count(s, "recovered") > before && s.value("state", "") == "running"; }, 90s));
}

// The workload's file holds 1..N with no gap or duplicate, and it still runs.
void check_workload(const std::string& name) {
  auto r = guest_sh(name, "kill $(cat /tmp/wl.pid) && sleep 0.1 && cat /tmp/wl");
  REQUIRE(r.status == 0);
  std::istringstream in(r.out);
  std::size_t expected = 1;
  std::string line;
  bool ordered = true;
  while (std::getline(in, line))
    if (!line.empty()) ordered = ordered && std::to_string(expected++) == line;
  INFO("workload records: " << expected - 1);
  CHECK(ordered);
  CHECK(expected > 100);
}

}  // namespace

TEST_CASE("restart: a supervisor killed with SIGKILL leaves the guest running; the next one takes it over",
          "[integration][restart]") {
  std::string name = unique_name("restart");
  REQUIRE(run_cli({"run", "--name", name, "--detach", "--verify-window", "2"}).status == 0);
  REQUIRE(wait_until([&] { return armed(name); }, 90s));
  crash_and_recover(name);  // leaves a quarantine record and a crash in the ledger
  REQUIRE(guest_sh(name, "rm -f /tmp/wl; immortal-workload /tmp/wl 5000 </dev/null >/dev/null 2>&1 & echo $! > /tmp/wl.pid").status == 0);
  json before = status_json(name);
  REQUIRE(before.value("recovery_state", json::object()).value("quarantined", json::array()).size() == 1);
  int vm = before.value("vm_pid", 0);
  REQUIRE(::kill(before.value("supervisor_pid", 0), SIGKILL) == 0);
  REQUIRE(wait_until([&] { return run_cli({"status", name}).status == 6; }, 10s));
  CHECK(process_alive(vm));  // the guest runs on without a supervisor

  // `run` finds the instance alive and takes it over.
  auto again = run_cli({"run", "--name", name, "--detach"});
  INFO(again.err);
  REQUIRE(again.status == 0);
  CHECK_THAT(again.err, Catch::Contains("attaching"));
  REQUIRE(wait_until([&] { return armed(name); }, 90s));
  json after = status_json(name);
  CHECK(after.value("boot_id", "") == before.value("boot_id", "?"));
  CHECK(after.value("vm_pid", 0) == vm);
  CHECK(after.value("supervisor_pid", 0) != before.value("supervisor_pid", 0));
  CHECK(recovery_count(after, "crashes") == recovery_count(before, "crashes"));
  CHECK(recovery_count(after, "recovered") == recovery_count(before, "recovered"));
  CHECK(after["recovery_state"]["quarantined"] == before["recovery_state"]["quarantined"]);
  CHECK_THAT(run_cli({"events", name}).out, Catch::Contains("attached"));
  check_workload(name);
  crash_and_recover(name);  // the new supervisor recovers in place
  CHECK(status_json(name).value("boot_id", "") == before.value("boot_id", "?"));
  // The repair VM is the supervisor's alone: it ends with it, also with one that attached.
  REQUIRE(::kill(status_json(name).value("supervisor_pid", 0), SIGKILL) == 0);
  CHECK(wait_until([&] { return qemu_processes(name + "-repair").empty(); }, 20s));
  CHECK(process_alive(vm));
  REQUIRE(wait_until([&] { return run_cli({"status", name}).status == 6; }, 20s));  // its lock is free
  auto attach = run_cli({"attach", name, "--detach"});
  INFO(attach.err);
  REQUIRE(attach.status == 0);
  CHECK(run_cli({"stop", name, "--force"}).status == 0);
  CHECK(wait_until([&] { return !process_alive(vm); }, 20s));
}

TEST_CASE("restart: a crash while no supervisor is attached freezes the guest; the next one bundles and reboots it",
          "[integration][restart]") {
  std::string name = unique_name("frozen");
  REQUIRE(run_cli({"run", "--name", name, "--detach"}).status == 0);
  REQUIRE(wait_until([&] { return armed(name); }, 90s));
  json before = status_json(name);
  std::string console = before.value("console_log", "");
  REQUIRE(guest_sh(name, "(sleep 3; echo null-deref > /dev/immortal-fault) </dev/null >/dev/null 2>&1 & sleep 0.1").status == 0);
  REQUIRE(::kill(before.value("supervisor_pid", 0), SIGKILL) == 0);
  // The oops reaches the armed breakpoint and the VM stops there: no reboot, nothing more printed.
  REQUIRE(wait_until([&] { return read_file(console).find("BUG: kernel NULL pointer dereference") != std::string::npos; }, 60s));
  // The oops finishes printing, then nothing: the console settles and no second boot begins.
  std::size_t size = 0;
  int quiet = 0;
  REQUIRE(wait_until([&] {
    std::size_t now = read_file(console).size();
    quiet = now == size ? quiet + 1 : 0;
    size = now;
    return quiet >= 40;  // 2 s without a byte (polled every 50 ms)
  }, 60s));
  wait_until([] { return false; }, 3s);
  auto frozen = read_file(console);
  CHECK(frozen.size() == size);
  auto boots = [](const std::string& text) {
    std::size_t n = 0;
    for (auto at = text.find("Linux version"); at != std::string::npos; at = text.find("Linux version", at + 1)) ++n;
    return n;
  };
  CHECK(boots(frozen) == 1);
  CHECK(process_alive(before.value("vm_pid", 0)));

  auto attach = run_cli({"attach", name, "--detach"});
  INFO(attach.err);
  REQUIRE(attach.status == 0);
  REQUIRE(wait_until([&] { json s = status_json(name);
                           return s.value("state", "") == "running" && s.value("boot_id", "") != before.value("boot_id", "?"); }, 120s));
  auto events = run_cli({"events", name, "--json"}).out;
  CHECK_THAT(events, Catch::Contains("no supervisor attached") && Catch::Contains("\"event\":\"reboot\""));
  CHECK(wait_until([&] { return status_json(name).value("last_crash", json::object()).value("bundle", "") != ""; }, 60s));
  CHECK(status_json(name)["last_crash"].value("outcome", "") == "rebooted");
  CHECK(run_cli({"stop", name, "--force"}).status == 0);
}

TEST_CASE("restart: upgrade hands the instance to a new binary, and rolls back when it fails", "[integration][restart]") {
  std::string name = unique_name("upgrade");
  REQUIRE(run_cli({"run", "--name", name, "--detach", "--verify-window", "2"}).status == 0);
  REQUIRE(wait_until([&] { return armed(name); }, 90s));
  json first = status_json(name);

  auto failed = run_cli({"upgrade", name, "--binary", "/bin/false", "--timeout", "30"}, 120s);
  INFO(failed.err);
  CHECK(failed.status == 1);
  CHECK_THAT(failed.err, Catch::Contains("rolled back"));
  REQUIRE(wait_until([&] { return armed(name); }, 90s));
  json kept = status_json(name);
  CHECK(kept.value("supervisor_pid", 0) == first.value("supervisor_pid", -1));
  CHECK(kept.value("vm_pid", 0) == first.value("vm_pid", -1));
  CHECK(kept.value("boot_id", "") == first.value("boot_id", "?"));

  auto upgraded = run_cli({"upgrade", name}, 180s);
  INFO(upgraded.err);
  REQUIRE(upgraded.status == 0);
  CHECK_THAT(upgraded.out, Catch::Contains("took over"));
  REQUIRE(wait_until([&] { return armed(name); }, 90s));
  json now = status_json(name);
  CHECK(now.value("supervisor_pid", 0) != first.value("supervisor_pid", 0));
  CHECK_FALSE(process_alive(first.value("supervisor_pid", 0)));
  CHECK(now.value("vm_pid", 0) == first.value("vm_pid", -1));
  CHECK(now.value("boot_id", "") == first.value("boot_id", "?"));
  crash_and_recover(name);
  CHECK(run_cli({"stop", name, "--force"}).status == 0);
}

TEST_CASE("restart: QEMU ending on its own is not a guest power-off", "[integration][restart]") {
  std::string name = unique_name("vmgone");
  std::string log = scratch_dir() + "/" + name + ".out";
  pid_t pid = spawn_immortal({"run", "--name", name, "--recovery", "off"}, log);
  REQUIRE(wait_until([&] { return read_file(log).find("is up") != std::string::npos; }, 90s));
  int vm = status_json(name).value("vm_pid", 0);
  REQUIRE(::kill(vm, SIGKILL) == 0);
  int status = 0;
  REQUIRE(::waitpid(pid, &status, 0) == pid);
  REQUIRE(WIFEXITED(status));
  CHECK(WEXITSTATUS(status) == 4);  // ExitCode::qemu, not 0 as for a power-off
  CHECK_THAT(read_file(log), Catch::Contains("without the guest powering off"));
  CHECK_THAT(read_file(test_runtime_root() + "/" + name + "/events.jsonl"), Catch::Contains("\"event\":\"vm-exited\""));
}
