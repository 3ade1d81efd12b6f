// `immortal run --disk/--net` and `immortal console` on the guest image: a raw and a read-only
// qcow2 disk, user networking with a port forwarded from the host, the serial console both ways,
// and a disk the firmware boots by itself (scripts/make-boot-disk).
#include "instance_json.h"

#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>

#include <fcntl.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <fstream>

using namespace immortal::test;
using namespace std::chrono_literals;
using nlohmann::json;

extern char** environ;

namespace {

pid_t spawn_shell(const std::string& script) {
  std::string sh = "/bin/sh", c = "-c", body = script;
  char* argv[] = {sh.data(), c.data(), body.data(), nullptr};
  pid_t pid = -1;
  REQUIRE(::posix_spawn(&pid, "/bin/sh", nullptr, nullptr, argv, environ) == 0);
  return pid;
}

bool exited(pid_t pid) {
  int status = 0;
  return ::waitpid(pid, &status, WNOHANG) == pid;
}

}  // namespace

TEST_CASE("devices: a raw and a read-only qcow2 disk, a forwarded port and the serial console",
          "[integration][devices]") {
  std::string dir = scratch_dir();
  std::string raw = dir + "/data.img", qcow2 = dir + "/base.qcow2";
  {
    std::ofstream out(raw, std::ios::binary);
    out << "IMMORTAL-RAW-DISK" << std::string((16 << 20) - 17, '\0');
  }
  REQUIRE(run_shell("qemu-img create -q -f qcow2 '" + qcow2 + "' 8M && echo made").find("made") != std::string::npos);
  std::string name = unique_name("devices");
  int port = free_port();
  // With --disk, the kernel is the disk's unless named: here the guest image's, its disks data only.
  auto run = run_cli({"run", "--name", name, "--detach", "--recovery", "off", "--kernel", guest_dir() + "/vmlinuz",
                      "--initrd", guest_dir() + "/initrd.img", "--disk", raw, "--disk", qcow2 + ",readonly",
                      "--net", "user,hostfwd=tcp:127.0.0.1:" + std::to_string(port) + "-:8080"});
  INFO(run.err);
  REQUIRE(run.status == 0);

  json s = status_json(name);
  CHECK(s["disks"] == json::array({raw + ",format=raw", qcow2 + ",format=qcow2,readonly"}));
  REQUIRE(s["nets"].size() == 1);
  CHECK(s["nets"][0]["net"] == "user,hostfwd=tcp:127.0.0.1:" + std::to_string(port) + "-:8080");

  // The guest sees both disks, in order, the second read-only; it writes to the first.
  CHECK(guest_sh(name, "head -c 17 /dev/vda").out == "IMMORTAL-RAW-DISK");
  CHECK(guest_sh(name, "cat /sys/block/vdb/ro").out == "1\n");
  CHECK(guest_sh(name, "printf WRITTEN-BY-GUEST | dd of=/dev/vda bs=4096 seek=1 conv=fsync 2>/dev/null && echo ok").out ==
        "ok\n");
  CHECK(guest_sh(name, "printf x | dd of=/dev/vdb conv=fsync 2>/dev/null && echo written").out != "written\n");

  // A service in the guest answers the host through the forwarded port.
  REQUIRE(wait_until([&] { return guest_sh(name, "ip -4 addr show eth0").out.find("10.0.2.15") != std::string::npos; }, 60s));
  REQUIRE(guest_sh(name, "mkdir -p /tmp/www && echo served-by-the-guest > /tmp/www/index.html && httpd -p 8080 -h /tmp/www")
              .status == 0);
  std::string page;
  CHECK(wait_until([&] { return (page = http_get(port, "/index.html", 10s)).find("served-by-the-guest") != std::string::npos; },
                   60s));
  INFO(page);
  CHECK(page.find("200 OK") != std::string::npos);

  // The console: what is typed reaches the guest's serial line (its echo comes back), what the
  // guest writes there reaches the session; one session at a time.
  std::string session_out = dir + "/" + name + "-console.out", done_flag = dir + "/" + name + "-console.done";
  pid_t session = spawn_shell("(printf 'typed-into-the-console\\n'; while [ ! -e '" + done_flag +
                              "' ]; do sleep 0.2; done) | '" IMMORTAL_BINARY "' console " + name + " > '" + session_out +
                              "' 2>&1");
  CHECK(wait_until([&] { return read_file(session_out).find("typed-into-the-console") != std::string::npos; }, 30s));
  auto second = run_cli({"console", name});
  CHECK(second.status != 0);
  CHECK_THAT(second.err, Catch::Contains("another console session"));
  CHECK(guest_sh(name, "echo written-by-the-guest > /dev/ttyS0").status == 0);
  CHECK(wait_until([&] { return read_file(session_out).find("written-by-the-guest") != std::string::npos; }, 30s));
  std::ofstream(done_flag) << "";
  CHECK(wait_until([&] { return exited(session); }, 30s));
  // The log has everything, from the first line of boot, whether or not a session was open.
  std::string log = read_file(s.value("console_log", ""));
  CHECK(log.find("rcS: guest ready") != std::string::npos);
  CHECK(log.find("written-by-the-guest") != std::string::npos);

  CHECK(run_cli({"stop", name}).status == 0);
  // What the guest wrote is on the host's file.
  std::ifstream in(raw, std::ios::binary);
  std::string head(4096 + 16, '\0');
  in.read(head.data(), static_cast<std::streamsize>(head.size()));
  CHECK(head.substr(4096, 16) == "WRITTEN-BY-GUEST");
}

TEST_CASE("devices: without --kernel the firmware boots the disk's own boot loader, and a crash is recovered",
          "[integration][devices]") {
  std::string disk = scratch_dir() + "/boot.img";
  std::string made = run_shell(IMMORTAL_SOURCE_ROOT "/scripts/make-boot-disk '" + disk + "' --kernel '" + guest_dir() + "/vmlinuz' --initrd '" +
                               guest_dir() + "/initrd.img' --append console=ttyS0 2>&1 && echo made");
  INFO(made);
  REQUIRE(made.find("made") != std::string::npos);
  std::string name = unique_name("firmware");
  auto run = run_cli({"run", "--name", name, "--detach", "--disk", disk, "--verify-window", "2"});
  INFO(run.err);
  REQUIRE(run.status == 0);
  json s = status_json(name);
  CHECK(s["kernel"] == "");
  std::string boot = s.value("boot_id", "");
  CHECK(guest_sh(name, "cat /proc/cmdline").out.find("BOOT_IMAGE=vmlinuz") != std::string::npos);  // SYSLINUX's
  REQUIRE(wait_until([&] { return status_json(name).value("recovery_state", json::object()).value("armed", false); }, 60s));
  inject(name, "null-deref");
  CHECK(wait_until([&] { return recovery_count(status_json(name), "recovered") == 1; }, 120s));
  CHECK(status_json(name).value("boot_id", "") == boot);
  CHECK(run_cli({"stop", name}).status == 0);
}

namespace {

// Host-side networks for one test: a bridge for a tap QEMU opens itself, a second bridge for
// QEMU's bridge helper, each with an address of its own; taken down again at the end.
struct HostBridges {
  static constexpr const char* kTapBridge = "imtst-br0";
  static constexpr const char* kTap = "imtst-tap0";
  static constexpr const char* kHelperBridge = "imtst-br1";
  static constexpr const char* kAclLine = "allow imtst-br1";
  bool acl_added = false;

  HostBridges() {
    remove();
    std::string made = run_shell(std::string("set -e; ip link add ") + kTapBridge + " type bridge; ip addr add 10.213.0.1/24 dev " +
                                 kTapBridge + "; ip link set " + kTapBridge + " up; ip tuntap add dev " + kTap +
                                 " mode tap; ip link set " + kTap + " master " + kTapBridge + " up; ip link add " +
                                 kHelperBridge + " type bridge; ip addr add 10.214.0.1/24 dev " + kHelperBridge +
                                 "; ip link set " + kHelperBridge + " up; echo made");
    REQUIRE(made.find("made") != std::string::npos);
    // qemu-bridge-helper attaches only to bridges its ACL allows (/etc/qemu/bridge.conf).
    if (run_shell(std::string("grep -qxF '") + kAclLine + "' /etc/qemu/bridge.conf 2>/dev/null && echo present")
            .find("present") == std::string::npos) {
      REQUIRE(run_shell(std::string("mkdir -p /etc/qemu && echo '") + kAclLine + "' >> /etc/qemu/bridge.conf && echo ok")
                  .find("ok") != std::string::npos);
      acl_added = true;
    }
  }
  ~HostBridges() {
    remove();
    if (acl_added) run_shell(std::string("sed -i '/^") + kAclLine + "$/d' /etc/qemu/bridge.conf");
  }
  static void remove() {
    run_shell(std::string("ip link del ") + kTap + " 2>/dev/null; ip link del " + kTapBridge + " 2>/dev/null; ip link del " +
              kHelperBridge + " 2>/dev/null; true");
  }
};

}  // namespace

TEST_CASE("devices: --net tap= and --net bridge= put the guest on the host's own networks", "[integration][devices]") {
  INFO("creating host bridges and taps needs root (CI runs as root)");
  REQUIRE(::geteuid() == 0);
  HostBridges nets;
  std::string name = unique_name("bridged");
  auto run = run_cli({"run", "--name", name, "--detach", "--recovery", "off", "--net", std::string("tap=") + HostBridges::kTap,
                      "--net", std::string("bridge=") + HostBridges::kHelperBridge});
  INFO(run.err);
  REQUIRE(run.status == 0);
  json s = status_json(name);
  REQUIRE(s["nets"].size() == 2);

  // eth0 is the tap, eth1 the helper's; no DHCP on these networks: the addresses are set by hand
  // (again on each try: the image's DHCP client flushes them while it gives up).
  auto reach = [&](const char* nic, const char* address, const char* host) {
    return guest_sh(name, std::string("ip link set ") + nic + " up; ip addr replace " + address + "/24 dev " + nic +
                              "; ping -c 1 -W 1 " + host + " > /dev/null && echo reached")
               .out == "reached\n";
  };
  CHECK(wait_until([&] { return reach("eth0", "10.213.0.2", "10.213.0.1"); }, 60s));
  CHECK(wait_until([&] { return reach("eth1", "10.214.0.2", "10.214.0.1"); }, 60s));
  // And the other way: the host reaches a service in the guest over the tap's bridge.
  REQUIRE(guest_sh(name, "mkdir -p /tmp/www && echo served-over-the-bridge > /tmp/www/index.html && httpd -p 8080 -h /tmp/www")
              .status == 0);
  CHECK(wait_until([&] {
    return run_shell("timeout 5 bash -c 'exec 3<>/dev/tcp/10.213.0.2/8080 && "
                     "printf \"GET /index.html HTTP/1.0\\r\\n\\r\\n\" >&3 && cat <&3' 2>/dev/null")
               .find("served-over-the-bridge") != std::string::npos;
  }, 30s));
  CHECK(run_cli({"stop", name}).status == 0);
}
