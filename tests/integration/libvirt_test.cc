// libvirt domains, against a real libvirtd (qemu:///system, TCG): `immortal prepare` edits a
// defined domain through libvirt's API so it can be protected, libvirt takes the definition and
// starts it (guest RAM in a shared file, the pvpanic device, the agent's channel, which our guest
// agent answers), and `immortal unprepare` puts the definition back.
// Not in the default run yet (CI's time budget); by hand, with libvirt-daemon-system and
// libvirt-clients installed:  build-san/tests/integration-tests "[.libvirt]"
#include "harness.h"

#include <catch2/catch.hpp>

#include <sys/socket.h>
#include <sys/un.h>
#include <poll.h>
#include <unistd.h>

#include <fstream>
#include <regex>

using namespace immortal::test;
using namespace std::chrono_literals;

namespace {

// libvirtd as Debian's packages ship it; started here when no service manager did (CI).
void ensure_libvirtd() {
  std::string started = run_shell(
      "command -v virsh > /dev/null || { echo 'no virsh (apt-get install libvirt-daemon-system libvirt-clients)'; exit; }; "
      "pgrep -x virtlogd > /dev/null || virtlogd -d; pgrep -x libvirtd > /dev/null || libvirtd -d; "
      "for i in $(seq 100); do virsh -c qemu:///system version > /dev/null 2>&1 && { echo up; exit; }; sleep 0.3; done; "
      "echo 'libvirtd did not answer'");
  INFO(started);
  REQUIRE(started == "up\n");
}

std::string virsh(const std::string& args) { return run_shell("virsh -c qemu:///system " + args + " 2>&1"); }

// A TCG domain booting the guest image's kernel and initramfs (copied: libvirt relabels the
// files a domain boots, and the build's own stay as they are).
std::string define_domain(const std::string& name) {
  std::string dir = scratch_dir() + "/" + name;
  REQUIRE(run_shell("mkdir -p '" + dir + "' && chmod 0755 '" + scratch_dir() + "' '" + dir + "' && cp '" + guest_dir() +
                    "/vmlinuz' '" + guest_dir() + "/initrd.img' '" + dir + "/' && chmod 0644 '" + dir + "'/* && echo ok") ==
          "ok\n");
  std::ofstream(dir + "/domain.xml") << "<domain type='qemu'>\n"
                                     << "  <name>" << name << "</name>\n"
                                     << "  <memory unit='MiB'>384</memory>\n"
                                     << "  <vcpu>1</vcpu>\n"
                                     << "  <os>\n"
                                     << "    <type arch='x86_64' machine='pc'>hvm</type>\n"
                                     << "    <kernel>" << dir << "/vmlinuz</kernel>\n"
                                     << "    <initrd>" << dir << "/initrd.img</initrd>\n"
                                     << "    <cmdline>console=ttyS0</cmdline>\n"
                                     << "  </os>\n"
                                     << "  <on_crash>destroy</on_crash>\n"
                                     << "  <devices>\n"
                                     << "    <serial type='pty'><target port='0'/></serial>\n"
                                     << "  </devices>\n"
                                     << "</domain>\n";
  std::string defined = virsh("define '" + dir + "/domain.xml'");
  INFO(defined);
  REQUIRE(defined.find("defined from") != std::string::npos);
  return dir;
}

// Reads what arrives on a UNIX stream socket for up to `wait`.
std::string read_socket(const std::string& path, std::chrono::seconds wait) {
  int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_un a{};
  a.sun_family = AF_UNIX;
  if (path.size() >= sizeof a.sun_path) return "";
  std::copy(path.begin(), path.end(), a.sun_path);
  std::string got;
  if (::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0) {
    auto deadline = std::chrono::steady_clock::now() + wait;
    while (std::chrono::steady_clock::now() < deadline && got.find("kernel_release") == std::string::npos) {
      pollfd p{fd, POLLIN, 0};
      if (::poll(&p, 1, 200) <= 0) continue;
      char buf[4096];
      ssize_t n = ::read(fd, buf, sizeof buf);
      if (n <= 0) break;
      got.append(buf, static_cast<std::size_t>(n));
    }
  }
  ::close(fd);
  return got;
}

}  // namespace

TEST_CASE("libvirt: prepare makes a defined domain protectable through libvirt's API, unprepare undoes it",
          "[integration][.libvirt]") {
  ensure_libvirtd();
  std::string name = unique_name("lv");
  define_domain(name);
  std::string original = virsh("dumpxml --inactive " + name);

  // Without a terminal to ask on and without --yes, nothing changes.
  auto asked = run_cli({"prepare", name});
  CHECK(asked.status == 2);
  CHECK_THAT(asked.err, Catch::Contains("--yes"));
  CHECK(virsh("dumpxml --inactive " + name) == original);
  CHECK(run_cli({"prepare", "no-such-domain-" + name, "--yes"}).status == 6);

  auto prepared = run_cli({"prepare", name, "--yes"});
  INFO(prepared.out << prepared.err);
  REQUIRE(prepared.status == 0);
  CHECK_THAT(prepared.out, Catch::Contains("+    <panic model=\"isa\"/>") && Catch::Contains("-  <on_crash>destroy</on_crash>") &&
                               Catch::Contains("+  <on_crash>preserve</on_crash>"));
  std::string xml = virsh("dumpxml --inactive " + name);
  INFO(xml);
  CHECK_THAT(xml, Catch::Contains("<source type='file'/>") && Catch::Contains("<access mode='shared'/>") &&
                      Catch::Contains("<panic model='isa'") && Catch::Contains("name='org.immortal.agent.0'") &&
                      Catch::Contains("<on_crash>preserve</on_crash>"));
  auto again = run_cli({"prepare", name, "--yes"});
  CHECK(again.status == 0);
  CHECK_THAT(again.out, Catch::Contains("already prepared"));

  // libvirt starts it as prepared: RAM in a file the host can map, the pvpanic device, and the
  // channel on which our guest agent says hello.
  std::string started = virsh("start " + name);
  INFO(started);
  REQUIRE(started.find("started") != std::string::npos);
  std::string live = virsh("dumpxml " + name);
  std::smatch channel;
  REQUIRE(std::regex_search(live, channel, std::regex("<source mode='bind' path='([^']+)'/>\\s*<target type='virtio' name='org.immortal.agent.0'")));
  std::string ram = run_shell("ls /var/lib/libvirt/qemu/ram/*-" + name + "/ 2>/dev/null");
  CHECK_THAT(ram, Catch::Contains("pc.ram"));
  CHECK_THAT(virsh("qemu-monitor-command " + name + " --hmp 'info qtree'"), Catch::Contains("pvpanic"));
  std::string hello;
  CHECK(wait_until([&] { return (hello = read_socket(channel[1], 5s)).find("kernel_release") != std::string::npos; }, 90s));
  INFO(hello);
  CHECK_THAT(hello, Catch::Contains("boot_id"));
  CHECK_THAT(virsh("destroy " + name), Catch::Contains("destroyed"));

  auto undone = run_cli({"unprepare", name, "--yes"});
  INFO(undone.out << undone.err);
  CHECK(undone.status == 0);
  std::string after = virsh("dumpxml --inactive " + name);
  CHECK_THAT(after, !Catch::Contains("memoryBacking") && !Catch::Contains("<panic") &&
                        !Catch::Contains("org.immortal.agent.0") && Catch::Contains("<on_crash>destroy</on_crash>") &&
                        !Catch::Contains("immortal.invalid"));
  CHECK_THAT(run_cli({"unprepare", name, "--yes"}).out, Catch::Contains("nothing to undo"));
  virsh("undefine " + name);
}
