// LKDTM, the kernel's own crash tests, as a fault source: scripts/build-guest-image builds it
// from the guest kernel's source and the image loads it; `immortal inject NAME lkdtm:TYPE` makes
// the victim write TYPE to its DIRECT trigger. One guest (recovery off) serves the whole file;
// the test that crashes it comes last and stops it.
#include "fault_catalogue.h"
#include "harness.h"
#include "instance_json.h"

#define CATCH_CONFIG_EXTERNAL_INTERFACES  // for the listener that stops the guest
#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>

#include <cstdlib>
#include <string>

using namespace immortal::test;
using namespace std::chrono_literals;
using nlohmann::json;

namespace {

constexpr char kTrigger[] = "/sys/kernel/debug/provoke-crash/DIRECT";

std::string& guest_name() {
  static std::string name;
  return name;
}

// The file's guest, booted by the first test that needs it.
const std::string& lkdtm_guest() {
  std::string& name = guest_name();
  if (!name.empty()) {
    INFO("the shared LKDTM guest failed to come up in an earlier test, or was stopped");
    REQUIRE(instance_state(name) == "running");
    return name;
  }
  name = unique_name("lkdtm");
  auto run = run_cli({"run", "--name", name, "--detach", "--recovery", "off"});
  INFO(run.err);
  REQUIRE(run.status == 0);
  return name;
}

// The crash test stops the guest; when a filter leaves it out, the guest is stopped once the
// run ends (before main() removes the runtime directory the stop needs).
struct StopLkdtmGuest : Catch::TestEventListenerBase {
  using TestEventListenerBase::TestEventListenerBase;
  void testRunEnded(const Catch::TestRunStats&) override {
    if (guest_name().empty()) return;
    std::string cmd = std::string(IMMORTAL_BINARY) + " stop '" + guest_name() + "' --force >/dev/null";
    if (std::system(cmd.c_str()) != 0) {
    }
  }
};
CATCH_REGISTER_LISTENER(StopLkdtmGuest)

}  // namespace

TEST_CASE("lkdtm: only LKDTM's shape of type names is accepted", "[lkdtm]") {
  using immortal::vmm::lkdtm_type;
  CHECK(lkdtm_type("lkdtm:BUG") == "BUG");
  CHECK(lkdtm_type("lkdtm:REFCOUNT_INC_NOT_ZERO_SATURATED") == "REFCOUNT_INC_NOT_ZERO_SATURATED");
  CHECK(lkdtm_type("lkdtm:" + std::string(40, 'A')) == std::string(40, 'A'));
  for (std::string bad : {"lkdtm:" + std::string(41, 'A'), std::string("lkdtm:"), std::string("lkdtm:bug"),
                          std::string("lkdtm:BUG\n"), std::string("lkdtm:BUG X"), std::string("lkdtm:-BUG"),
                          std::string("lkdtm:BUG", 9) + '\0', std::string("LKDTM:BUG"), std::string("BUG")})
    CHECK_FALSE(lkdtm_type(bad).has_value());
  CHECK(immortal::vmm::is_lkdtm_class("lkdtm:bug"));  // malformed, but meant for LKDTM
  CHECK_FALSE(immortal::vmm::is_lkdtm_class("null-deref"));
  CHECK(immortal::vmm::find_fault_class("lkdtm:BUG") == nullptr);  // not one of the driver's classes
}

TEST_CASE("lkdtm: inject refuses a malformed LKDTM type before touching any guest", "[integration][lkdtm]") {
  // Lower case, empty, foreign characters, too long: LKDTM's names are [A-Z0-9_]{1,40}.
  for (const char* bad : {"lkdtm:bug", "lkdtm:", "lkdtm:BUG;reboot", "lkdtm:BUG X", "lkdtm:../DIRECT",
                          "lkdtm:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"}) {
    auto r = run_cli({"inject", "no-such-instance", bad});
    INFO(bad << ": " << r.err);
    CHECK(r.status == 2);
    CHECK_THAT(r.err, Catch::Contains("bad LKDTM type"));
  }
  auto list = run_cli({"inject", "--list"});
  CHECK(list.status == 0);
  CHECK_THAT(list.out, Catch::Contains("lkdtm:TYPE") && Catch::Contains(kTrigger));
}

TEST_CASE("lkdtm: the guest image loads LKDTM, which lists its crash types and runs one", "[integration][lkdtm]") {
  const std::string& name = lkdtm_guest();
  auto lsmod = run_cli({"exec", name, "--", "cat", "/proc/modules"});
  REQUIRE(lsmod.status == 0);
  CHECK_THAT(lsmod.out, Catch::Contains("lkdtm "));
  auto types = run_cli({"exec", name, "--", "cat", kTrigger});
  INFO(types.err);
  REQUIRE(types.status == 0);
  CHECK(types.out.rfind("Available crash types:\n", 0) == 0);
  for (const char* type : {"\nPANIC\n", "\nBUG\n", "\nEXCEPTION\n", "\nSOFTLOCKUP\n", "\nHUNG_TASK\n",
                           "\nCORRUPT_LIST_DEL\n", "\nUSERCOPY_KERNEL\n", "\nFORTIFY_MEM_MEMBER\n"})
    CHECK_THAT(types.out, Catch::Contains(type));

  // A well-formed name the guest's LKDTM does not know: refused, nothing started.
  auto unknown = run_cli({"inject", name, "lkdtm:NO_SUCH_TYPE"});
  CHECK(unknown.status == 2);
  CHECK_THAT(unknown.err, Catch::Contains("has no crash type \"NO_SUCH_TYPE\""));

  // A type that only reports (the stack offset of this process) goes all the way through.
  int victim = inject(name, "lkdtm:REPORT_STACK");
  std::string ended = "spawned pid " + std::to_string(victim) + " exited with status 0";
  CHECK(wait_until([&] { return read_file(test_runtime_root() + "/" + name + "/console.log").find(ended) != std::string::npos; }, 30s));
  std::string console = read_file(test_runtime_root() + "/" + name + "/console.log");
  CHECK_THAT(console, Catch::Contains("injects lkdtm:REPORT_STACK") && Catch::Contains("lkdtm: Performing direct entry REPORT_STACK"));
  CHECK(instance_state(name) == "running");
}

TEST_CASE("kdump: immortal-kdump-load says what is missing when no crash memory is reserved", "[integration][lkdtm][kdump]") {
  // The file's guest boots without crashkernel=.
  const std::string& name = lkdtm_guest();
  auto load = run_cli({"exec", name, "--", "immortal-kdump-load"});
  CHECK(load.status == 1);
  CHECK_THAT(load.err, Catch::Contains("no crash memory reserved") && Catch::Contains("crashkernel="));
  CHECK(run_cli({"exec", name, "--", "cat", "/sys/kernel/kexec_crash_loaded"}).out == "0\n");
}

TEST_CASE("lkdtm: lkdtm:BUG crashes the guest, as the stock kernel reacts to it", "[integration][lkdtm]") {
  std::string name = lkdtm_guest();
  auto r = run_cli({"inject", name, "lkdtm:BUG"});
  INFO(r.err);
  REQUIRE(r.status == 0);
  CHECK_THAT(r.out, Catch::Contains("/sbin/immortal-victim lkdtm:BUG"));
  bool crashed = wait_until([&] { return instance_state(name) == "crashed"; }, 60s);
  std::string console_path = test_runtime_root() + "/" + name + "/console.log";
  wait_until([&] { return read_file(console_path).find("end Kernel panic") != std::string::npos; }, 10s);
  std::string console = read_file(console_path);
  INFO("console:\n" << console.substr(console.size() > 6000 ? console.size() - 6000 : 0));
  CHECK(crashed);
  // In this order, after the victim announced itself. The path is the in-tree one: the
  // image's Kbuild maps the build directory away (guest-agent/lkdtm/Kbuild).
  auto at = console.find("injects lkdtm:BUG");
  REQUIRE(at != std::string::npos);
  for (const char* expected : {"lkdtm: Performing direct entry BUG", "kernel BUG at drivers/misc/lkdtm/bugs.c",
                               "invalid opcode", "Comm: immortal-victim", "RIP: 0010:lkdtm_BUG", "direct_entry",
                               "Kernel panic - not syncing: Fatal exception"}) {
    auto found = console.find(expected, at);
    INFO("expected: " << expected);
    CHECK(found != std::string::npos);
    if (found != std::string::npos) at = found;
  }
  CHECK(run_cli({"stop", name, "--force"}).status == 0);
  CHECK(wait_until([&] { return qemu_processes(name).empty(); }, 10s));
  guest_name().clear();  // stopped: nothing left for the listener
}
