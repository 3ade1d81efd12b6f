// The guest's own kdump, with recovery off: the guest kernel reserves crash memory at boot
// (crashkernel=), /sbin/immortal-kdump-load loads the image's /boot/vmlinuz with its crash
// initramfs (kexec_file_load, KEXEC_FILE_ON_CRASH), and an oops then boots that kernel, which
// announces itself on the serial console and powers the VM off. The supervisor's side (catching
// crash_kexec when recovery is on) is tested with recovery.
#include "harness.h"

#include <catch2/catch.hpp>

#include <chrono>
#include <iostream>
#include <string>

using namespace immortal::test;
using namespace std::chrono_literals;

TEST_CASE("kdump: with recovery off, an oops boots the guest's own crash kernel", "[integration][kdump]") {
  std::string name = unique_name("kdump");
  // 128 MiB of the 512: the crash kernel (Debian's, with its own page tables, ftrace and
  // slab) needs about 60 MiB of it before it unpacks its initramfs.
  auto run = run_cli({"run", "--name", name, "--detach", "--recovery", "off", "--append", "console=ttyS0 crashkernel=128M"});
  INFO(run.err);
  REQUIRE(run.status == 0);
  std::string console_path = test_runtime_root() + "/" + name + "/console.log";

  auto dmesg = run_cli({"exec", name, "--", "dmesg"});
  REQUIRE(dmesg.status == 0);
  CHECK_THAT(dmesg.out, Catch::Contains("Reserving 128MB of memory at") && Catch::Contains("for crashkernel"));

  auto start = std::chrono::steady_clock::now();
  auto load = run_cli({"exec", name, "--", "immortal-kdump-load"});
  double load_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  INFO(load.out << load.err);
  REQUIRE(load.status == 0);
  CHECK_THAT(load.out, Catch::Contains("crash kernel /boot/vmlinuz loaded"));
  REQUIRE(run_cli({"exec", name, "--", "cat", "/sys/kernel/kexec_crash_loaded"}).out == "1\n");

  start = std::chrono::steady_clock::now();
  inject(name, "null-deref");
  bool up = wait_until([&] { return read_file(console_path).find("immortal-kdump: the crash kernel is up") != std::string::npos; }, 120s);
  double up_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  // Its next line (the crashed kernel's memory, /proc/vmcore) follows a moment later.
  wait_until([&] { return read_file(console_path).find("immortal-kdump: /proc/vmcore:") != std::string::npos; }, 10s);
  std::string console = read_file(console_path);
  INFO("console:\n" << console.substr(console.size() > 8000 ? console.size() - 8000 : 0));
  CHECK(up);
  // The oops, then the crash kernel: oops_end() went to crash_kexec() and never reached
  // panic(), so there is no "Kernel panic" line in between.
  auto oops = console.find("BUG: kernel NULL pointer dereference", console.find("injects null-deref"));
  REQUIRE(oops != std::string::npos);
  auto second_boot = console.find("Linux version", oops);
  REQUIRE(second_boot != std::string::npos);
  CHECK(console.substr(oops, second_boot - oops).find("Kernel panic") == std::string::npos);
  CHECK(console.find("elfcorehdr=", second_boot) != std::string::npos);  // a kdump kernel
  CHECK(console.find("immortal-kdump: /proc/vmcore:", second_boot) != std::string::npos);
  std::cout << "kdump: crash kernel loaded in " << load_s << " s (immortal exec round trip); "
            << "up " << up_s << " s after the injection\n";

  // The crash kernel powers the VM off; the instance ends with it.
  CHECK(wait_until([&] { return qemu_processes(name).empty(); }, 30s));
  run_cli({"stop", name, "--force"});
}

namespace {

std::string status_field(const std::string& name, const std::string& field) {
  auto r = run_cli({"status", name, "--json"}, 20s);
  auto pos = r.out.find("\"" + field + "\": ");
  if (pos == std::string::npos) return "";
  auto start = r.out.find_first_not_of(' ', pos + field.size() + 3);
  auto end = r.out.find_first_of(",\n", start);
  return r.out.substr(start, end - start);
}

}  // namespace

TEST_CASE("kdump: with recovery on, a guest with kdump armed survives a driver crash in place, and its kdump "
          "still takes a crash that cannot be recovered", "[integration][kdump]") {
  std::string name = unique_name("kdumprec");
  // Hung tasks are not to be recovered here (policy): the one crash below that must reach kdump.
  auto run = run_cli({"run", "--name", name, "--detach", "--verify-window", "2", "--no-recover", "hung-task", "--append",
                      "console=ttyS0 crashkernel=128M"});
  INFO(run.err);
  REQUIRE(run.status == 0);
  REQUIRE(wait_until([&] { return status_field(name, "armed") == "true"; }, 60s));
  std::string boot = status_field(name, "boot_id");
  auto load = run_cli({"exec", name, "--", "immortal-kdump-load"});
  INFO(load.out << load.err);
  REQUIRE(load.status == 0);
  REQUIRE(run_cli({"exec", name, "--", "cat", "/sys/kernel/kexec_crash_loaded"}).out == "1\n");

  // A driver oops: oops_end() calls crash_kexec() first; immortal steps over it and recovers.
  inject(name, "null-deref");
  REQUIRE(wait_until([&] { return status_field(name, "recovered") == "1"; }, 90s));
  CHECK(status_field(name, "boot_id") == boot);  // no kdump kernel, no reboot
  CHECK(run_cli({"exec", name, "--", "true"}).status == 0);
  CHECK(run_cli({"exec", name, "--", "cat", "/sys/kernel/kexec_crash_loaded"}).out == "1\n");  // still armed

  // A crash recovery does not take (a hung task, which this instance's policy leaves to the
  // guest): the guest's own crash kernel gets it, as the operator configured.
  std::string console_path = test_runtime_root() + "/" + name + "/console.log";
  REQUIRE(run_cli({"unquarantine", name, "--all"}).status == 0);
  inject(name, "hung-task");
  bool up = wait_until([&] { return read_file(console_path).find("immortal-kdump: the crash kernel is up") != std::string::npos; }, 150s);
  auto events = run_cli({"events", name, "--json"}).out;
  INFO(events);
  CHECK(up);
  CHECK_THAT(events, Catch::Contains("\"event\":\"kdump\""));
  CHECK(wait_until([&] { return qemu_processes(name).empty(); }, 30s));
  run_cli({"stop", name, "--force"});
}
