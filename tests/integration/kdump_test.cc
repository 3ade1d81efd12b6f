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
  std::string console_path = runtime_root() + "/" + name + "/console.log";

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
