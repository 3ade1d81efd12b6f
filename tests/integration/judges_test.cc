// Independent judges of what we read from a dump: Debian's `crash` with the debug vmlinux.
// (drgn 0.0.22 cannot read QEMU's ELF dumps of this kernel — "recursive address translation";
// it judges our own kdump-layout vmcores once bundles exist. See docs/benchmarks.md.)
#include "harness.h"

#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <sstream>

using namespace immortal::test;
using namespace std::chrono_literals;
using nlohmann::json;

TEST_CASE("crash reads the same kernel log and modules from a crashed guest's dump as we do", "[integration][judges]") {
  const char* vmlinux = std::getenv("IMMORTAL_DEBUG_VMLINUX");
  INFO("scripts/test sets IMMORTAL_DEBUG_VMLINUX to Debian's debug vmlinux of the guest kernel");
  REQUIRE(vmlinux != nullptr);
  std::string name = unique_name("judged");
  REQUIRE(run_cli({"run", "--name", name, "--detach", "--recovery", "off"}).status == 0);
  std::string rundir = test_runtime_root() + "/" + name;
  REQUIRE(wait_until([&] { return read_file(rundir + "/supervisor.log").find("guest profile saved") != std::string::npos; }, 60s));
  REQUIRE(run_cli({"inject", name, "null-deref"}).status == 0);
  REQUIRE(wait_until([&] { return read_file(rundir + "/supervisor.log").find("is frozen") != std::string::npos; }, 60s));
  std::string dump = scratch_dir() + "/" + name + ".core";
  REQUIRE(run_cli({"dump", name, dump}, 120s).status == 0);
  run_cli({"stop", name, "--force"});

  std::string commands = scratch_dir() + "/" + name + ".crash";
  std::ofstream(commands) << "log\nmod\nquit\n";
  std::string judged = run_shell(std::string("crash -s '") + vmlinux + "' '" + dump + "' < '" + commands + "' 2>&1");
  INFO("crash said:\n" << judged.substr(0, 4000));
  REQUIRE(judged.find("Kernel panic - not syncing: Fatal exception") != std::string::npos);

  auto ours = run_cli({"diag", dump, "--profile", rundir + "/profile", "--dmesg", "--modules"}, 120s);
  REQUIRE(ours.status == 0);
  auto our_lines = lines_of(ours.out);
  // Every log line crash prints (same "[    s.us] text" format) is one of ours, in order.
  std::size_t at = 0, compared = 0;
  for (const auto& line : lines_of(judged)) {
    if (line.size() < 15 || line[0] != '[' || line[13] != ']') continue;
    auto found = std::find(our_lines.begin() + static_cast<long>(at), our_lines.end(), line);
    INFO("crash's log line: " << line);
    CHECK(found != our_lines.end());
    if (found != our_lines.end()) at = static_cast<std::size_t>(found - our_lines.begin());
    ++compared;
  }
  CHECK(compared > 100);
  // crash's `mod` lists each module by name; all of them are in our module list.
  for (const char* module : {"immortal_fault", "virtio_console", "pvpanic_pci", "qemu_fw_cfg"}) {
    CHECK(judged.find(module) != std::string::npos);
    CHECK(ours.out.find(module) != std::string::npos);
  }
  std::remove(dump.c_str());
}
