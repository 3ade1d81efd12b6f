// The reference real guest (scripts/build-real-guest): Debian with systemd from a qcow2 disk the
// firmware boots, the agent and the fault-injection driver from their packages, a web service
// reached from the host through hostfwd and a workload that appends fsynced records. A driver
// crash is recovered in place while a host-side client keeps asking the service and the workload
// keeps writing; afterwards no request failed, and after a clean shutdown the disk holds every
// record, none torn.
#include "instance_json.h"

#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>

#include <unistd.h>

#include <atomic>
#include <cstdlib>
#include <regex>
#include <sstream>
#include <thread>

using namespace immortal::test;
using namespace std::chrono_literals;
using nlohmann::json;

namespace {

// A copy-on-write overlay of the suite's cached image (which stays as built), in the scratch dir.
std::string overlay_disk(const char* suite) {
  std::string var = std::string("IMMORTAL_REAL_GUEST_") + suite;
  const char* dir = std::getenv(var.c_str());
  if (!dir || !*dir) FAIL(var << " is not set: build the image with scripts/build-real-guest (scripts/test sets it)");
  std::string disk = scratch_dir() + "/" + unique_name(suite) + ".qcow2";
  REQUIRE(run_shell("qemu-img create -q -f qcow2 -F qcow2 -b '" + std::string(dir) + "/disk.qcow2' '" + disk + "' && echo ok")
              .find("ok") != std::string::npos);
  return disk;
}

// POSIX cksum(1) of a string: CRC-32 (0x04C11DB7, MSB first) over the bytes and their length.
std::uint32_t posix_cksum(const std::string& data) {
  std::uint32_t crc = 0;
  auto add = [&](std::uint8_t byte) {
    crc ^= static_cast<std::uint32_t>(byte) << 24;
    for (int i = 0; i < 8; ++i) crc = (crc & 0x80000000u) ? (crc << 1) ^ 0x04C11DB7u : crc << 1;
  };
  for (char c : data) add(static_cast<std::uint8_t>(c));
  for (std::size_t n = data.size(); n; n >>= 8) add(static_cast<std::uint8_t>(n & 0xff));
  return ~crc;
}

struct Records {
  std::uint64_t count = 0, first = 0, last = 0;
  std::vector<std::string> problems;
};

// Every line "SEQ TIME CKSUM", SEQ counting up by one from 1, CKSUM matching.
Records check_records(const std::string& text) {
  Records r;
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);) {
    std::istringstream fields(line);
    std::string seq, time;
    std::uint64_t sum = 0;
    if (!(fields >> seq >> time >> sum) || seq.size() != 8 || posix_cksum(seq + " " + time) != sum) {
      r.problems.push_back("torn or corrupt record: \"" + line + "\"");
      continue;
    }
    std::uint64_t n = std::stoull(seq);
    if (r.count == 0) r.first = n;
    else if (n != r.last + 1) r.problems.push_back("gap: " + std::to_string(r.last) + " then " + std::to_string(n));
    r.last = n;
    ++r.count;
  }
  return r;
}

std::uint64_t newest_record(const std::string& name) {
  auto r = guest_sh(name, "tail -n 1 /var/lib/immortal-records/records.log | cut -c1-8");
  try {
    return r.status == 0 && !r.out.empty() ? std::stoull(r.out) : 0;
  } catch (const std::exception&) {
    return 0;
  }
}

}  // namespace

TEST_CASE("real guest: a Debian 12 VM with systemd, a web service and fsynced records survives a driver crash in place",
          "[integration][real-guest]") {
  std::string disk = overlay_disk("bookworm");
  std::string name = unique_name("real");
  int port = free_port();
  auto run = run_cli({"run", "--name", name, "--detach", "--memory", "1G", "--boot-timeout", "300", "--verify-window", "3",
                      "--disk", disk, "--net", "user,hostfwd=tcp:127.0.0.1:" + std::to_string(port) + "-:80"},
                     std::chrono::seconds(400));
  INFO(run.err);
  REQUIRE(run.status == 0);
  json s = status_json(name);
  std::string boot = s.value("boot_id", "");
  CHECK(s.value("kernel_release", "").starts_with("6.1."));
  // The agent came from its package and runs under systemd.
  CHECK(guest_sh(name, "dpkg-query -W -f='${Status}' immortal-agent").out == "install ok installed");
  CHECK(guest_sh(name, "systemctl is-active immortal-agent").out == "active\n");

  REQUIRE(wait_until([&] { return http_get(port, "/", 20s).find("immortal reference guest") != std::string::npos; }, 180s));
  REQUIRE(wait_until([&] { return newest_record(name) > 0; }, 120s));
  REQUIRE(wait_until([&] { return status_json(name).value("recovery_state", json::object()).value("armed", false); }, 120s));
  REQUIRE(guest_sh(name, "test -c /dev/immortal-fault").status == 0);  // loaded at boot, built by DKMS
  // Debian's kdump-tools armed the guest's own crash kernel at boot; immortal protects it as usual.
  CHECK(wait_until([&] { return guest_sh(name, "cat /sys/kernel/kexec_crash_loaded").out == "1\n"; }, 60s));

  // A client asks the service without pause from before the crash until after its recovery.
  std::atomic<bool> stop{false};
  std::atomic<int> answered{0}, failed{0};
  std::thread client([&] {
    while (!stop) {
      if (http_get(port, "/cgi-bin/records", 20s).find("200 OK") != std::string::npos) ++answered;
      else ++failed;
    }
  });
  REQUIRE(wait_until([&] { return answered > 3; }, 60s));
  std::uint64_t before = newest_record(name);
  inject(name, "null-deref");
  bool recovered = wait_until([&] { return recovery_count(status_json(name), "recovered") == 1; }, 180s);
  int answered_at_recovery = answered;
  CHECK(wait_until([&] { return answered > answered_at_recovery + 3; }, 60s));
  stop = true;
  client.join();
  INFO("crash: " << last_event_of(name, "crash").dump().substr(0, 2000));
  REQUIRE(recovered);
  CHECK(failed == 0);
  json after = status_json(name);
  CHECK(after.value("boot_id", "") == boot);
  CHECK(recovery_count(after, "reboots") == 0);
  std::uint64_t later = 0;
  CHECK(wait_until([&] { return (later = newest_record(name)) > before + 5; }, 60s));
  CHECK(wait_until([&] { return !last_event_of(name, "bundle").is_null(); }, 120s));
  // The guest's kdump was passed over for this crash, not unloaded: it is there for the next one.
  CHECK(guest_sh(name, "cat /sys/kernel/kexec_crash_loaded").out == "1\n");

  // A clean shutdown, then the records read from the disk image itself.
  CHECK(run_cli({"stop", name, "--timeout", "120"}, 180s).status == 0);
  std::string text = run_shell(IMMORTAL_SOURCE_ROOT "/scripts/build-real-guest --records '" + disk + "'");
  Records r = check_records(text);
  INFO((r.problems.empty() ? std::string("no problems") : r.problems.front()));
  CHECK(r.problems.empty());
  CHECK(r.first == 1);
  CHECK(r.last >= later);
  ::unlink(disk.c_str());
}

TEST_CASE("real guest: with recovery off, Debian's kdump-tools in the Debian 12 VM saves the crash itself",
          "[integration][real-guest]") {
  std::string disk = overlay_disk("bookworm");
  std::string name = unique_name("realkdump");
  // With a network: Debian's kdump-tools-dump.service waits for network-online.target, which
  // without one takes systemd-networkd-wait-online's two minutes in the crash kernel.
  auto run = run_cli({"run", "--name", name, "--detach", "--memory", "1G", "--boot-timeout", "300", "--recovery", "off",
                      "--disk", disk, "--net", "user"},
                     std::chrono::seconds(400));
  INFO(run.err);
  REQUIRE(run.status == 0);
  std::string boot = status_json(name).value("boot_id", "");
  REQUIRE(wait_until([&] { return guest_sh(name, "cat /sys/kernel/kexec_crash_loaded").out == "1\n"; }, 120s));
  REQUIRE(guest_sh(name, "test -c /dev/immortal-fault").status == 0);
  REQUIRE(guest_sh(name, "ls /var/crash | grep -c '^2' || true").out == "0\n");

  inject(name, "null-deref");
  // The crash kernel boots, kdump-tools saves the dump and reboots the VM; the guest comes back.
  std::string console_path = test_runtime_root() + "/" + name + "/console.log";
  bool back = wait_until([&] {
    std::string b = status_json(name).value("boot_id", "");
    return !b.empty() && b != boot && status_json(name).value("state", "") == "running";
  }, 420s);
  std::string console = read_file(console_path);
  INFO("console:\n" << console.substr(console.size() > 8000 ? console.size() - 8000 : 0));
  REQUIRE(back);
  auto oops = console.find("BUG: kernel NULL pointer dereference");
  REQUIRE(oops != std::string::npos);
  // oops_end() handed the guest to its crash kernel: no panic in between, a kdump boot after.
  auto crash_boot = console.find("Linux version", oops);
  REQUIRE(crash_boot != std::string::npos);
  CHECK(console.substr(oops, crash_boot - oops).find("Kernel panic") == std::string::npos);
  CHECK(console.find("elfcorehdr=", crash_boot) != std::string::npos);
  CHECK(console.find("saved vmcore in /var/crash/", crash_boot) != std::string::npos);

  // What kdump-tools left: a makedumpfile dump and the crashed kernel's log, naming our driver.
  auto listing = guest_sh(name, "cd /var/crash/2* && ls && stat -c %s dump.* && head -c 12 dump.*");
  INFO(listing.out << listing.err);
  CHECK(listing.status == 0);
  CHECK_THAT(listing.out, Catch::Contains("dmesg.") && Catch::Contains("makedumpfile"));
  std::smatch size;
  REQUIRE(std::regex_search(listing.out, size, std::regex("\n([0-9]+)\n")));
  CHECK(std::stoull(size[1]) > 1'000'000);
  auto dmesg = guest_sh(name, "cat /var/crash/2*/dmesg.*");
  CHECK_THAT(dmesg.out, Catch::Contains("immortal-victim: pid") && Catch::Contains("BUG: kernel NULL pointer dereference") &&
                            Catch::Contains("immortal_fault"));
  CHECK(run_cli({"stop", name, "--force"}).status == 0);
  ::unlink(disk.c_str());
}

// By hand: scripts/build-real-guest trixie, then
//   IMMORTAL_REAL_GUEST_trixie=build/real-guest-trixie build-san/tests/integration-tests "[real-guest-trixie]"
TEST_CASE("real guest: Debian 13 (Linux 6.12): profile, the host's views of its kernel, a recovered crash and its bundle",
          "[integration][real-guest-trixie]") {
  std::string disk = overlay_disk("trixie");
  std::string name = unique_name("trixie");
  // One vCPU: QEMU 7.2's multi-threaded TCG once let a vCPU run an int3 that 6.12's text_poke_bp
  // had already removed (an "Oops: int3" at boot while systemd started, before any protection).
  auto run = run_cli({"run", "--name", name, "--detach", "--memory", "1G", "--vcpus", "1", "--boot-timeout", "300",
                      "--verify-window", "3", "--disk", disk},
                     std::chrono::seconds(400));
  INFO(run.err);
  REQUIRE(run.status == 0);
  json s;
  // The first status may wait behind the profile of a big kernel (200 000 symbols).
  REQUIRE(wait_until([&] { return !(s = status_json(name)).value("boot_id", "").empty(); }, 120s));
  CHECK(s.value("kernel_release", "").starts_with("6.12."));
  std::string boot = s.value("boot_id", "");
  REQUIRE(wait_until([&] { return status_json(name).value("recovery_state", json::object()).value("armed", false); }, 180s));
  // What the kernel is made of, as the supervisor understood it.
  json support = last_event_of(name, "kernel-support");
  INFO(support.dump());
  CHECK(support.value("missing", json::array()).empty());
  CHECK_THAT(support.value("understood", ""), Catch::Contains("pcpu_hot") && Catch::Contains("mem[]"));

  // The host's own views, read from guest memory, agree with the guest's.
  auto ps = run_cli({"ps", name});
  CHECK(ps.status == 0);
  CHECK_THAT(ps.out, Catch::Contains("systemd") && Catch::Contains("immortal-agent"));
  auto lsmod = run_cli({"lsmod", name});
  CHECK(lsmod.status == 0);
  CHECK_THAT(lsmod.out, Catch::Contains("immortal_fault"));
  auto dmesg = run_cli({"dmesg", name});
  CHECK(dmesg.status == 0);
  CHECK_THAT(dmesg.out, Catch::Contains("Linux version 6.12"));

  REQUIRE(guest_sh(name, "test -c /dev/immortal-fault").status == 0);
  inject(name, "null-deref");
  bool recovered = wait_until([&] { return recovery_count(status_json(name), "recovered") == 1; }, 180s);
  INFO("crash: " << last_event_of(name, "crash").dump().substr(0, 2000));
  REQUIRE(recovered);
  CHECK(status_json(name).value("boot_id", "") == boot);
  json bundle;
  REQUIRE(wait_until([&] { return !(bundle = last_event_of(name, "bundle")).is_null(); }, 120s));
  auto diag = run_cli({"diag", bundle.value("path", bundle.value("bundle", ""))});
  INFO(diag.err);
  CHECK(diag.status == 0);
  CHECK_THAT(diag.out, Catch::Contains("6.12") && Catch::Contains("[immortal_fault]") && Catch::Contains("recovered"));
  // The faulting function by its own name, though the profile may have been taken while systemd
  // was still loading modules (their init code's symbols are dropped once it is freed).
  std::string function = last_event_of(name, "crash")["analysis"]["fault"].value("function", "");
  CHECK_THAT(function, Catch::StartsWith("immortal_fault_") && Catch::EndsWith("[immortal_fault]"));
  // The vmcore leaves out free pages on 6.12 too (page types are page_type's top byte there).
  std::smatch free_pages;
  REQUIRE(std::regex_search(diag.out, free_pages, std::regex("left out: free ([0-9]+)")));
  CHECK(std::stoull(free_pages[1].str()) > 1000);
  CHECK(run_cli({"stop", name, "--timeout", "120"}, 180s).status == 0);
  ::unlink(disk.c_str());
}
