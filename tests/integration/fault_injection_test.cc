// Fault injection with recovery off: every class of the fault catalogue in turn, `immortal
// inject`, and the stock kernel's reaction as the guest console shows it. The guest
// console and the supervisor's own report are the judges.
#include "fault_catalogue.h"
#include "harness.h"
#include "instance_json.h"

#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cstdio>
#include <regex>
#include <sstream>

using namespace immortal::test;
using namespace std::chrono_literals;
using nlohmann::json;

namespace {

// The boot id the agent last said hello with ("" before its first hello).
std::string agent_boot_id(const std::string& name) { return status_json(name).value("boot_id", ""); }

// The classes in one guest lifetime after another, with --on-crash reboot: the supervisor
// bundles each crash and reboots the guest, as a stock kernel with panic=N reboots itself. One
// guest instead of one per class (a fresh supervisor and boot each) keeps the suite's time down;
// each class still meets a freshly booted kernel.
void stock_reactions(const std::vector<immortal::vmm::FaultClass>& catalogue) {
  std::string name = unique_name("faults");
  auto run = run_cli({"run", "--name", name, "--detach", "--recovery", "off", "--on-crash", "reboot"});
  INFO(run.err);
  REQUIRE(run.status == 0);
  std::string runtime = test_runtime_root() + "/" + name;
  std::string boot = agent_boot_id(name);
  REQUIRE(!boot.empty());
  std::uint64_t reboots = 0;
  for (const auto& fault : catalogue) {
    const std::string cls = fault.name;
    INFO("fault class " << cls);
    auto inject = run_cli({"inject", name, cls}, 60s);
    INFO(inject.err);
    INFO("supervisor log:\n" << read_file(runtime + "/supervisor.log"));
    REQUIRE(inject.status == 0);
    CHECK_THAT(inject.out, Catch::Contains("victim pid") && Catch::Contains("/sbin/immortal-victim " + cls));

    // Soft lockups and hung tasks take the watchdogs a few seconds to notice under TCG; the
    // reboot follows the crash's bundle.
    bool rebooted = wait_until([&] {
      json s = status_json(name);
      return recovery_count(s, "reboots") == reboots + 1 && s.value("state", "") == "running" &&
             !s.value("boot_id", "").empty() && s.value("boot_id", "") != boot;
    }, 150s);
    std::string console = read_file(runtime + "/console.log");
    INFO("console:\n" << console.substr(console.size() > 6000 ? console.size() - 6000 : 0));
    REQUIRE(rebooted);
    ++reboots;
    boot = agent_boot_id(name);
    // The signature appears in order, after the victim announced itself (this boot's part of the
    // console: earlier classes' crashes are above it).
    REQUIRE(console.rfind("injects " + cls) != std::string::npos);
    auto missing = missing_after_injection(console, cls, {fault.console_signature.begin(), fault.console_signature.end()});
    std::string listed;
    for (const auto& line : missing) listed += "\n  " + line;
    INFO("expected, in order, and not found:" << listed);
    CHECK(missing.empty());
  }
  std::string supervisor_log = read_file(runtime + "/supervisor.log");
  CHECK_THAT(supervisor_log, Catch::Contains("the guest kernel crashed") && Catch::Contains("recovery is off"));
  // One crash record per class, each bundled and answered with a reboot.
  std::size_t reboot_events = 0;
  for (const auto& e : event_log(name)) reboot_events += e.value("event", "") == "rebooted";
  CHECK(reboot_events == catalogue.size());
  CHECK(run_cli({"stop", name, "--force"}).status == 0);
  CHECK(wait_until([&] { return qemu_processes(name).empty(); }, 10s));
}

}  // namespace

// Each way the stock kernel ends a crash of our driver: the oops of process context ("Fatal
// exception"), a direct panic, an oops in interrupt context, panic_on_warn, the soft-lockup and
// hung-task watchdogs, and the two classes whose recovery tests take their own path (a double
// fault, list debugging). Every other class ends as null-deref does, after an oops of its own;
// that oops is checked with recovery on by its test in recovery_test.cc. A reboot per class
// costs about 14 s of CI's time: all fifteen are the hidden test below.
TEST_CASE("fault classes: the stock kernel's reaction to each way a crash ends shows and the supervisor reports each crash",
          "[integration][faults]") {
  std::vector<immortal::vmm::FaultClass> classes;
  for (const char* name : {"null-deref", "panic", "timer", "warn", "softlockup", "hung-task", "stack-overflow", "list-corruption"}) {
    const auto* fault = immortal::vmm::find_fault_class(name);
    REQUIRE(fault);
    classes.push_back(*fault);
  }
  stock_reactions(classes);
}

// By hand (about four minutes): build-san/tests/integration-tests "[faults-all]"
TEST_CASE("fault classes: the stock kernel's reaction to every class shows and the supervisor reports each crash",
          "[.][faults-all]") {
  stock_reactions(immortal::vmm::fault_catalogue());
}

TEST_CASE("inject refuses an unknown class before touching any guest", "[integration][faults]") {
  auto r = run_cli({"inject", "no-such-instance", "melt-down"});
  CHECK(r.status == 2);
  CHECK_THAT(r.err, Catch::Contains("unknown fault class \"melt-down\""));
  CHECK(run_cli({"inject", "melt-down"}).status == 2);
  auto list = run_cli({"inject", "--list"});
  CHECK(list.status == 0);
  for (const auto& f : immortal::vmm::fault_catalogue()) CHECK_THAT(list.out, Catch::Contains(f.name));
}

TEST_CASE("a crashed guest's dump tells the panic, the victim on its CPU and the taint", "[integration][faults][introspection]") {
  std::string name = unique_name("crash-dump");
  REQUIRE(run_cli({"run", "--name", name, "--detach", "--recovery", "off"}).status == 0);
  REQUIRE(wait_until([&] {
    auto r = run_cli({"status", name, "--json"});
    return r.status == 0 && json::parse(r.out)["profile"].contains("taken_at");
  }, 60s));
  REQUIRE(run_cli({"inject", name, "null-deref"}).status == 0);
  REQUIRE(wait_until([&] { return read_file(test_runtime_root() + "/" + name + "/supervisor.log").find("is frozen") != std::string::npos; }, 60s));
  std::string dump = scratch_dir() + "/" + name + ".core";
  REQUIRE(run_cli({"dump", name, dump}, 120s).status == 0);
  auto diag = run_cli({"diag", dump, "--profile", test_runtime_root() + "/" + name + "/profile", "--json", "--bt"}, 120s);
  INFO(diag.err);
  REQUIRE(diag.status == 0);
  json report = json::parse(diag.out);
  CHECK(report["panic_message"] == "Fatal exception");
  std::string taint = report["taint"];
  for (char flag : {'D', 'O', 'E'}) CHECK(taint.find(flag) != std::string::npos);  // died, out-of-tree, unsigned
  // The kernel's own unwinder printed the oops' call trace on the console; ours, replaying
  // the ORC tables from the dump, must find the same frames (name+offset) in the same order.
  auto strip = [](std::string frame) {
    frame = frame.substr(0, frame.find(' '));
    return frame.substr(0, frame.find('/'));
  };
  std::vector<std::string> kernel_trace;
  {
    std::string console = read_file(test_runtime_root() + "/" + name + "/console.log");
    auto at = console.find("Call Trace:");
    REQUIRE(at != std::string::npos);
    std::istringstream in(console.substr(at));
    for (std::string line; std::getline(in, line) && line.find("</TASK>") == std::string::npos;) {
      if (!line.empty() && line.back() == '\r') line.pop_back();  // the serial console ends lines with \r\n
      auto text = line.substr(line.find(']') + 1);
      text = text.substr(text.find_first_not_of(' '));
      // Frames only ("func+0x1a/0x40 [mod]"): not "? " guesses, not the user registers that follow.
      static const std::regex frame(R"(^[A-Za-z0-9_.]+\+0x[0-9a-f]+/0x[0-9a-f]+( \[[a-z0-9_]+\])?$)");
      if (!std::regex_match(text, frame)) continue;
      kernel_trace.push_back(strip(text));
    }
  }
  REQUIRE(kernel_trace.size() >= 4);
  bool victim_on_a_cpu = false;
  for (const auto& cpu : report["cpus"]) {
    if (!cpu.contains("task") || cpu["task"]["comm"] != "immortal-victim") continue;
    victim_on_a_cpu = true;
    CHECK(cpu["backtrace_method"] == "orc");
    std::vector<std::string> ours;
    for (const auto& f : cpu["backtrace"]) {
      CHECK(f["reliable"] == true);
      ours.push_back(strip(f["symbol"].get<std::string>()));
    }
    INFO("ours: " << cpu["backtrace"].dump());
    CHECK(std::any_of(ours.begin(), ours.end(), [](const std::string& f) { return f.rfind("panic+", 0) == 0; }));
    CHECK(ours.back().find("(user space)") == std::string::npos);  // stripped: the user frame is an address
    auto from = std::find(ours.begin(), ours.end(), "immortal_fault_null_deref+0x5");
    REQUIRE(from != ours.end());
    for (const auto& frame : kernel_trace) {
      INFO("kernel's frame " << frame);
      auto found = std::find(from, ours.end(), frame);
      CHECK(found != ours.end());
      if (found != ours.end()) from = found;
    }
  }
  CHECK(victim_on_a_cpu);
  run_cli({"stop", name, "--force"});
  std::remove(dump.c_str());
}
