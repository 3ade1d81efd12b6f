// --disk and --net as `immortal run` reads them, and the QEMU devices they become.
#include "base/error.h"
#include "cli/device_options.h"
#include "qemu/qemu_machine.h"

#include "support/exit_code.h"

#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>

#include <unistd.h>

#include <algorithm>
#include <fstream>

using namespace immortal;
using immortal::test::code_of;
using namespace immortal::vmm;

namespace {

// The value that follows each occurrence of flag.
std::vector<std::string> values_of(const std::vector<std::string>& args, const std::string& flag) {
  std::vector<std::string> out;
  for (std::size_t i = 0; i + 1 < args.size(); ++i)
    if (args[i] == flag) out.push_back(args[i + 1]);
  return out;
}

}  // namespace

TEST_CASE("--disk: a path and its options", "[devices]") {
  auto d = parse_disk_option("/images/web.qcow2,format=qcow2,readonly");
  CHECK(d.path == "/images/web.qcow2");
  CHECK(d.format == "qcow2");
  CHECK(d.read_only);
  CHECK(parse_disk_option("a.img").format.empty());  // detected later
  CHECK(parse_disk_option("/with,,comma.img").path == "/with,comma.img");
  CHECK(describe(DiskConfig{"/with,comma.img", "raw", false}) == "/with,,comma.img,format=raw");
  for (const char* bad : {"", ",format=raw", "/a,format=vmdk", "/a,cache=none", "/a,readonly=maybe"})
    CHECK(code_of([&] { parse_disk_option(bad); }) == ExitCode::usage);
}

TEST_CASE("--disk: the host's file decides the format, and a lie about it is refused", "[devices]") {
  char dir_template[] = "/tmp/immortal-disk-XXXXXX";
  REQUIRE(::mkdtemp(dir_template));
  std::string dir = dir_template;
  std::ofstream(dir + "/raw.img") << std::string(4096, '\0');
  std::ofstream(dir + "/q.qcow2") << std::string("QFI\xfb", 4) << std::string(4092, '\0');
  auto raw = parse_disk_option(dir + "/raw.img");
  check_disk(raw);
  CHECK(raw.format == "raw");
  auto q = parse_disk_option(dir + "/q.qcow2");
  check_disk(q);
  CHECK(q.format == "qcow2");
  // A qcow2 image handed to the guest as raw would let it overwrite the image's own metadata.
  auto lie = parse_disk_option(dir + "/q.qcow2,format=raw");
  CHECK(code_of([&] { check_disk(lie); }) == ExitCode::bad_input);
  auto other_lie = parse_disk_option(dir + "/raw.img,format=qcow2");
  CHECK(code_of([&] { check_disk(other_lie); }) == ExitCode::bad_input);
  auto missing = parse_disk_option(dir + "/none.img");
  CHECK(code_of([&] { check_disk(missing); }) == ExitCode::bad_input);
  auto directory = parse_disk_option(dir);
  CHECK(code_of([&] { check_disk(directory); }) == ExitCode::bad_input);
  std::filesystem::remove_all(dir);
}

TEST_CASE("--net: user networking with forwarded ports, tap and bridge", "[devices]") {
  auto user = parse_net_option("user,hostfwd=tcp::8080-:80,hostfwd=udp:127.0.0.1:5353-:53");
  CHECK(user.kind == NetConfig::Kind::user);
  REQUIRE(user.forwards.size() == 2);
  CHECK(user.forwards[0].protocol == "tcp");
  CHECK(user.forwards[0].host_address.empty());
  CHECK(user.forwards[0].host_port == 8080);
  CHECK(user.forwards[0].guest_port == 80);
  CHECK(user.forwards[1].host_address == "127.0.0.1");
  CHECK(describe(user) == "user,hostfwd=tcp::8080-:80,hostfwd=udp:127.0.0.1:5353-:53");
  CHECK(parse_net_option("tap=tap0").host_interface == "tap0");
  CHECK(parse_net_option("bridge=br0").kind == NetConfig::Kind::bridge);
  for (const char* bad : {"", "vde", "user,hostfwd=tcp::0-:80", "user,hostfwd=tcp::8080-:99999", "user,hostfwd=sctp::1-:2",
                          "user,hostfwd=tcp:host.example:1-:2", "user,hostfwd=tcp::1-10.0.2.15:2", "user,smb=/",
                          "tap=", "tap=much-too-long-name", "tap=a,b", "bridge=br0;rm", "user,hostfwd=tcp::80"})
    CHECK(code_of([&] { parse_net_option(bad); }) == ExitCode::usage);
}

TEST_CASE("--channel: a named port and the host file it appends to", "[devices]") {
  auto ch = parse_channel_option("org.example.log,path=/var/log/a,,b.log");
  CHECK(ch.name == "org.example.log");
  CHECK(ch.path == "/var/log/a,b.log");
  CHECK(describe(ch) == "org.example.log,path=/var/log/a,,b.log");
  for (const char* bad : {"", "org.example.log", ",path=/x", "a b,path=/x", "org/x,path=/x", "x,path=", "x,file=/y",
                          "org.immortal.agent.0,path=/x"})
    CHECK(code_of([&] { parse_channel_option(bad); }) == ExitCode::usage);
  char dir_template[] = "/tmp/immortal-channel-XXXXXX";
  REQUIRE(::mkdtemp(dir_template));
  std::string dir = dir_template;
  auto good = parse_channel_option("org.example.log,path=" + dir + "/out.log");
  check_channel(good);
  CHECK(std::filesystem::is_regular_file(dir + "/out.log"));
  auto in_missing_dir = parse_channel_option("x,path=" + dir + "/none/out.log");
  CHECK(code_of([&] { check_channel(in_missing_dir); }) == ExitCode::bad_input);
  auto directory = parse_channel_option("x,path=" + dir);
  CHECK(code_of([&] { check_channel(directory); }) == ExitCode::bad_input);
  std::filesystem::remove_all(dir);
}

TEST_CASE("MAC addresses are QEMU's, stable per instance and interface", "[devices]") {
  CHECK(instance_mac("web", 0) == instance_mac("web", 0));
  CHECK(instance_mac("web", 0) != instance_mac("web", 1));
  CHECK(instance_mac("web", 0) != instance_mac("db", 0));
  CHECK(instance_mac("web", 0).starts_with("52:54:00:"));
  CHECK(instance_mac("web", 0).size() == 17);
}

TEST_CASE("disks and interfaces become virtio devices; no kernel means the firmware boots the first disk", "[devices]") {
  MachineConfig c;
  c.name = "web";
  c.runtime_dir = "/run/immortal/web";
  c.console_log = "/run/immortal/web/console.log";
  c.disks = {{"/images/web,1.qcow2", "qcow2", false}, {"/dev/sdb", "raw", true}};
  c.nets = {parse_net_option("user,hostfwd=tcp::8080-:80"), parse_net_option("tap=tap3")};
  c.nets[0].mac = instance_mac("web", 0);
  c.channels = {{"org.example.log", "/var/log/web,1.log"}};
  auto args = qemu::qemu_command_line(c, 7);
  CHECK(std::find(args.begin(), args.end(), "-kernel") == args.end());
  auto blockdevs = values_of(args, "-blockdev");
  REQUIRE(blockdevs.size() == 2);
  auto first = nlohmann::json::parse(blockdevs[0]);
  CHECK(first["driver"] == "qcow2");
  CHECK(first["file"]["filename"] == "/images/web,1.qcow2");  // JSON: no comma escaping needed
  CHECK(first["read-only"] == false);
  auto second = nlohmann::json::parse(blockdevs[1]);
  CHECK(second["file"]["driver"] == "host_device");
  CHECK(second["read-only"] == true);
  auto devices = values_of(args, "-device");
  CHECK(std::count_if(devices.begin(), devices.end(), [](const std::string& d) { return d.find("bootindex=0") != std::string::npos; }) == 1);
  auto netdevs = values_of(args, "-netdev");
  REQUIRE(netdevs.size() == 2);
  CHECK(netdevs[0] == "user,id=net0,hostfwd=tcp::8080-:80");
  CHECK(netdevs[1] == "tap,id=net1,ifname=tap3,script=no,downscript=no");
  CHECK(std::count(devices.begin(), devices.end(), "virtio-net-pci,netdev=net0,mac=" + instance_mac("web", 0)) == 1);
  // The console is a socket for `immortal console`, logged by QEMU whether or not one is open.
  auto chardevs = values_of(args, "-chardev");
  CHECK(std::any_of(chardevs.begin(), chardevs.end(), [](const std::string& d) {
    return d.starts_with("socket,id=console,path=/run/immortal/web/console.sock") &&
           d.find("logfile=/run/immortal/web/console.log") != std::string::npos;
  }));
  // A channel is a port on the agent's virtio-serial bus, appending to its file.
  CHECK(std::count(chardevs.begin(), chardevs.end(), "file,id=channel0,path=/var/log/web,,1.log,append=on") == 1);
  CHECK(std::count(devices.begin(), devices.end(),
                   "virtserialport,bus=agent-serial.0,chardev=channel0,name=org.example.log") == 1);
  // QEMU confines itself (seccomp); it may start qemu-bridge-helper only for a bridge.
  CHECK(values_of(args, "-sandbox") ==
        std::vector<std::string>{"on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny"});
  c.nets.push_back(parse_net_option("bridge=br0"));
  CHECK(values_of(qemu::qemu_command_line(c, 7), "-sandbox")[0].find("spawn=allow") != std::string::npos);
  c.nets.pop_back();
  c.kernel = "/boot/vmlinuz";
  c.append = "root=/dev/vda1 console=ttyS0";
  args = qemu::qemu_command_line(c, 7);
  CHECK(values_of(args, "-kernel") == std::vector<std::string>{"/boot/vmlinuz"});
  CHECK(values_of(args, "-initrd").empty());
}

TEST_CASE("a shared repair VM's windows: functions of one PCI slot, a doorbell on the second serial port, free page "
          "reporting", "[devices]") {
  MachineConfig c;
  c.name = "repair-0123";
  c.runtime_dir = "/run/immortal/.repair-shared/repair-vm-0123/vm";
  c.console_log = c.runtime_dir + "/console.log";
  c.shared_windows = {{"slot-mailbox-0", 10, 8 << 20, false, 0x18, 0}, {"slot-mailbox-1", 11, 8 << 20, false, 0x18, 1},
                      {"snapshot-arena-0", 12, 1 << 30, true, 0x13, 0}};
  auto devices = values_of(qemu::qemu_command_line(c, 7), "-device");
  auto has = [&](const std::string& d) { return std::count(devices.begin(), devices.end(), d) == 1; };
  // Function 0 says the slot has more; a window alone in its slot does not.
  CHECK(has("ivshmem-plain,memdev=slot-mailbox-0,addr=0x18.0,multifunction=on"));
  CHECK(has("ivshmem-plain,memdev=slot-mailbox-1,addr=0x18.1"));
  CHECK(has("ivshmem-plain,memdev=snapshot-arena-0,addr=0x13.0"));
  CHECK_FALSE(has("virtio-balloon-pci,free-page-reporting=on"));
  CHECK(values_of(qemu::qemu_command_line(c, 7), "-serial").size() == 1);
  c.doorbell = c.runtime_dir + "/doorbell";
  c.return_free_memory = true;
  auto args = qemu::qemu_command_line(c, 7);
  devices = values_of(args, "-device");
  CHECK(has("virtio-balloon-pci,free-page-reporting=on"));
  // The console stays ttyS0; the doorbell is ttyS1, read from DOORBELL.in.
  CHECK(values_of(args, "-serial") == std::vector<std::string>{"chardev:console", "chardev:doorbell"});
  auto chardevs = values_of(args, "-chardev");
  CHECK(std::count(chardevs.begin(), chardevs.end(), "pipe,id=doorbell,path=" + c.doorbell) == 1);
}
