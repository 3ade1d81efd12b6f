// libvirt domains, against a real libvirtd (qemu:///system, TCG): `immortal prepare` edits a
// defined domain through libvirt's API so it can be protected, libvirt takes the definition and
// starts it (guest RAM in a shared file, the pvpanic device, the agent's channel, which our guest
// agent answers), and `immortal unprepare` puts the definition back. `immortal attach --libvirt`
// supervises the running domain without owning it: crashes recovered in place, libvirt seeing no
// crash, stop or restart, the domain outliving its supervisor.
// scripts/test installs libvirt-daemon-system and libvirt-clients; the tests start libvirtd
// themselves when no service manager did. By hand: build-san/tests/integration-tests "[libvirt]"
#include "harness.h"

#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>

#include <signal.h>
#include <sys/wait.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <poll.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <fstream>
#include <sstream>
#include <regex>

using namespace immortal::test;
using namespace std::chrono_literals;
using json = nlohmann::json;

namespace {

// libvirtd as Debian's packages ship it; started here when no service manager did (CI).
void ensure_libvirtd() {
  // A host without udev leaves /dev/kvm root's alone (0600). libvirt probes QEMU as root, finds
  // KVM, then judges KVM unusable for its QEMU user and throws the probe away: every lookup probes
  // again (4 s here), and one `virsh define` took two minutes. Debian's udev rules give the
  // device to group kvm (0660), libvirt's QEMU user's group: that is set here, as a udev host has it.
  std::string started = run_shell(
      "command -v virsh > /dev/null || { echo 'no virsh (apt-get install libvirt-daemon-system libvirt-clients)'; exit; }; "
      "if [ -c /dev/kvm ] && getent group kvm > /dev/null && [ \"$(stat -c %G /dev/kvm)\" = root ]; then "
      "chgrp kvm /dev/kvm && chmod 0660 /dev/kvm; fi; "
      "pgrep -x virtlogd > /dev/null || virtlogd -d; pgrep -x libvirtd > /dev/null || libvirtd -d; "
      "for i in $(seq 100); do virsh -c qemu:///system version > /dev/null 2>&1 && { echo up; exit; }; sleep 0.3; done; "
      "echo 'libvirtd did not answer'");
  INFO(started);
  REQUIRE(started == "up\n");
}

std::string virsh(const std::string& args) { return run_shell("virsh -c qemu:///system " + args + " 2>&1"); }

// A TCG domain booting the guest image's kernel and initramfs (copied: libvirt relabels the
// files a domain boots, and the build's own stay as they are).
std::string define_domain(const std::string& name, int memory_mib = 384) {
  std::string dir = scratch_dir() + "/" + name;
  REQUIRE(run_shell("mkdir -p '" + dir + "' && chmod 0755 '" + scratch_dir() + "' '" + dir + "' && cp '" + guest_dir() +
                    "/vmlinuz' '" + guest_dir() + "/initrd.img' '" + dir + "/' && chmod 0644 '" + dir + "'/* && echo ok") ==
          "ok\n");
  std::ofstream(dir + "/domain.xml") << "<domain type='qemu'>\n"
                                     << "  <name>" << name << "</name>\n"
                                     << "  <memory unit='MiB'>" << memory_mib << "</memory>\n"
                                     << "  <vcpu>1</vcpu>\n"
                                     << "  <os>\n"
                                     << "    <type arch='x86_64' machine='pc'>hvm</type>\n"
                                     << "    <kernel>" << dir << "/vmlinuz</kernel>\n"
                                     << "    <initrd>" << dir << "/initrd.img</initrd>\n"
                                     << "    <cmdline>console=ttyS0</cmdline>\n"
                                     << "  </os>\n"
                                     << "  <on_crash>destroy</on_crash>\n"
                                     << "  <features><acpi/></features>\n"  // as virt-install makes them: hot-plug needs it
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
          "[integration][libvirt]") {
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

namespace {

json status_of(const std::string& name) {
  auto r = run_cli({"status", name, "--json"}, 40s);
  return r.status == 0 ? json::parse(r.out, nullptr, false) : json();
}

std::uint64_t recoveries_of(const std::string& name) {
  json s = status_of(name);
  return s.is_object() && s.contains("recovery_state") ? s["recovery_state"].value("recovered", 0ull) : 0;
}

}  // namespace

TEST_CASE("libvirt: attach --libvirt protects a running domain in place; it outlives its supervisor",
          "[integration][libvirt]") {
  ensure_libvirtd();
  std::string name = unique_name("lva");
  define_domain(name, 512);
  struct Cleanup {
    std::string name;
    ~Cleanup() {
      // The patterns' brackets keep pkill from matching the shell that runs them.
      run_shell("pkill -f '[e]vent " + name + " --all'; pkill -f '[i]mmortal attach.* " + name +
                "'; virsh -c qemu:///system destroy " + name + "; virsh -c qemu:///system undefine " + name + "; echo");
    }
  } cleanup{name};
  REQUIRE(run_cli({"prepare", name, "--yes"}).status == 0);
  REQUIRE_THAT(virsh("start " + name), Catch::Contains("started"));
  // libvirt's own view of the domain's life, for the whole test.
  std::string events = scratch_dir() + "/" + name + ".events";
  run_shell("(virsh -c qemu:///system event " + name + " --all --loop --timestamp > '" + events +
            "' 2>&1 &) ; echo");
  auto domstate = [&] { return virsh("domstate " + name); };

  int metrics_port = free_port();
  std::string hooked = scratch_dir() + "/" + name + ".hooked";
  auto attached = run_cli({"attach", "--libvirt", name, "--detach", "--metrics-listen",
                           "127.0.0.1:" + std::to_string(metrics_port), "--on-event",
                           "line=$(cat); printf '%s %s\\n' \"$IMMORTAL_EVENT\" \"$line\" >> '" + hooked + "'"},
                          180s);
  INFO(attached.out << attached.err);
  REQUIRE(attached.status == 0);
  CHECK_THAT(attached.out, Catch::Contains("is up"));
  // The profile, then the repair VM booted from it.
  REQUIRE(wait_until([&] {
    json s = status_of(name);
    return s.is_object() && s.contains("repair") && s["repair"].contains("vm") && s["repair"]["vm"].value("state", "") == "ready";
  }, 180s));
  json s = status_of(name);
  CHECK(s["backend"] == "libvirt");
  int first_supervisor = s.value("supervisor_pid", 0);
  // A second supervisor for the same domain, under another instance name, is refused.
  auto second = run_cli({"attach", "--libvirt", name, "--name", name + "-again", "--detach"}, 60s);
  CHECK(second.status != 0);
  CHECK_THAT(second.err, Catch::Contains("already protected by instance \"" + name + "\""));

  // The Prometheus endpoint: promtool accepts it, and its counters move with the crashes.
  auto metrics = [&] {
    std::string response = http_get(metrics_port, "/metrics", 20s);
    auto body = response.find("\r\n\r\n");
    return body == std::string::npos ? std::string() : response.substr(body + 4);
  };
  auto promtool = [&](const std::string& exposition) {
    std::string file = scratch_dir() + "/" + name + ".metrics";
    std::ofstream(file) << exposition;
    return run_shell("promtool check metrics < '" + file + "' 2>&1; echo \"status $?\"");
  };
  std::string g = "{guest=\"" + name + "\"}";
  std::string exposition = metrics();
  INFO(exposition);
  CHECK_THAT(exposition, Catch::Contains("immortal_crashes_total" + g + " 0\n") &&
                             Catch::Contains("immortal_repair_worker_ready{guest=\"" + name + "\",mode=\"vm\"} 1\n"));
  CHECK(promtool(exposition) == "status 0\n");

  // `events --follow` from here on: each line stamped with the time it reached the follower.
  std::string followed = scratch_dir() + "/" + name + ".followed";
  run_shell("(IMMORTAL_RUNTIME_DIR='" + test_runtime_root() + "' " IMMORTAL_BINARY " events " + name +
            " --follow --json | while IFS= read -r line; do t=$(printf '%s' \"$line\" | sed -n "
            "'s/.*\"time\":\"\\([^\"]*\\)\".*/\\1/p'); now=$(date +%s.%N); then=$(date -d \"$t\" +%s.%N); "
            "echo \"$now $then $line\"; done > '" + followed + "'; echo ended >> '" + followed + "') > /dev/null 2>&1 &"
            " echo");

  // A driver crash, recovered in place through the repair VM; libvirt sees the domain run on.
  auto injected = run_cli({"inject", name, "null-deref", "--wait", "--json"}, 200s);
  INFO(injected.out << injected.err);
  CHECK(injected.status == 0);
  json outcome = json::parse(injected.out, nullptr, false);
  REQUIRE(outcome.is_object());
  CHECK(outcome.value("outcome", "") == "recovered");
  CHECK(outcome.value("kind", "") == "oops");
  CHECK(outcome.value("crash", 0) == 1);
  CHECK(outcome.value("pid", 0) > 0);
  CHECK(recoveries_of(name) == 1);  // --wait returned once that was so
  // Every event of the crash reached the follower within a second of being written.
  REQUIRE(wait_until([&] { return read_file(followed).find("\"event\":\"recovered\"") != std::string::npos; }, 10s));
  {
    std::istringstream lines(read_file(followed));
    double worst = 0;
    int crash_events = 0;
    for (std::string line; std::getline(lines, line);) {
      double arrived = 0, written = 0;
      if (std::sscanf(line.c_str(), "%lf %lf", &arrived, &written) != 2 || line.find("\"crash\":1") == std::string::npos) continue;
      ++crash_events;
      worst = std::max(worst, arrived - written);
    }
    INFO(read_file(followed));
    CHECK(crash_events >= 4);  // caught, analysis, plan, resumed, recovered…
    CHECK(worst < 1.0);
  }
  CHECK(wait_until([&] {
    exposition = metrics();
    return exposition.find("immortal_crash_outcomes_total{guest=\"" + name + "\",kind=\"oops\",outcome=\"recovered\"} 1\n") !=
           std::string::npos;
  }, 10s));
  CHECK_THAT(exposition, Catch::Contains("immortal_crashes_total" + g + " 1\n") &&
                             Catch::Contains("immortal_recoveries_total" + g + " 1\n") &&
                             Catch::Contains("immortal_recovery_latency_seconds_count" + g + " 1\n") &&
                             Catch::Contains("immortal_quarantined_functions" + g + " 1\n"));
  CHECK(promtool(exposition) == "status 0\n");
  // libvirt itself tells any host (a read-only connection) that the domain is protected, and its count.
  auto listed = [&] {
    auto r = run_cli({"list", "--connect", "qemu:///system", "--json"}, 30s);
    json all = r.status == 0 ? json::parse(r.out, nullptr, false) : json();
    for (const auto& d : all.is_array() ? all : json::array())
      if (d.value("domain", "") == name) return d;
    return json();
  };
  CHECK(wait_until([&] {
    json d = listed();
    return d.value("protection", "") == "protected" && d.value("status", json::object()).value("recovered", "") == "1";
  }, 90s));
  CHECK(listed().value("prepared", false));

  // The --on-event hook ran for the crash's events, each given as JSON on its stdin.
  CHECK(wait_until([&] { return read_file(hooked).find("recovered {") != std::string::npos; }, 20s));
  CHECK_THAT(read_file(hooked), Catch::Contains("crash {\"analysis\"") && Catch::Contains("resumed {"));
  CHECK_THAT(domstate(), Catch::Contains("running"));
  CHECK(guest_sh(name, "echo alive").out == "alive\n");
  std::string log = read_file(test_runtime_root() + "/" + name + "/events.jsonl");
  CHECK_THAT(log, Catch::Contains("\"repair_mode\":\"vm\""));

  // The supervisor killed: the domain runs on, and a new one takes it over with its history.
  REQUIRE(first_supervisor > 0);
  ::kill(first_supervisor, SIGKILL);
  REQUIRE(wait_until([&] { return !process_alive(first_supervisor); }, 30s));
  CHECK_THAT(domstate(), Catch::Contains("running"));
  auto again = run_cli({"attach", name, "--detach"}, 180s);
  INFO(again.out << again.err);
  REQUIRE(again.status == 0);
  CHECK(recoveries_of(name) == 1);
  // The first crash quarantined the fault driver's write(): lift that, then crash it again.
  CHECK(run_cli({"unquarantine", name, "--all"}).status == 0);
  CHECK(inject(name, "bug") > 0);
  REQUIRE(wait_until([&] { return recoveries_of(name) == 2; }, 120s));
  CHECK_THAT(domstate(), Catch::Contains("running"));
  // The new supervisor serves the metrics on the same address, the guest's totals carried over.
  CHECK(wait_until([&] { return metrics().find("immortal_recoveries_total" + g + " 2\n") != std::string::npos; }, 20s));

  // stop lets go of a domain it does not own.
  auto stopped = run_cli({"stop", name}, 60s);
  CHECK(stopped.status == 0);
  CHECK_THAT(stopped.out, Catch::Contains("detached"));
  CHECK_THAT(domstate(), Catch::Contains("running"));
  CHECK(listed().value("protection", "") == "detached");
  // The follower ends with the instance (it had followed both supervisors).
  CHECK(wait_until([&] { return read_file(followed).ends_with("ended\n"); }, 10s));
  CHECK_THAT(read_file(followed), Catch::Contains("\"crash\":2"));

  // Through all of it libvirt saw pauses (breakpoints, the gdbstub's attach), never a crash, a
  // stop, a start or a reboot.
  std::string seen = read_file(events);
  INFO(seen);
  CHECK_THAT(seen, Catch::Contains("Suspended"));
  for (const char* never : {"Stopped", "Started", "Crashed", "Shutdown", "'reboot'", "PMSuspended"})
    CHECK_THAT(seen, !Catch::Contains(never));
}

TEST_CASE("libvirt: immortal daemon protects prepared domains and autostart instances, restarts their supervisors, "
          "follows a save and serves every guest's metrics",
          "[integration][libvirt]") {
  ensure_libvirtd();
  std::string name = unique_name("lvd");
  define_domain(name, 512);
  // One of our own instances, defined and marked autostart: the daemon boots it.
  std::string own = unique_name("own");
  pid_t daemon = 0;
  struct Cleanup {
    std::string name, own;
    pid_t& daemon;
    ~Cleanup() {
      if (daemon > 0 && ::kill(daemon, SIGTERM) == 0) ::waitpid(daemon, nullptr, 0);
      run_cli({"stop", own, "--force"});
      run_shell("pkill -f '[i]mmortal.* attach --libvirt .* --name " + name + "'; virsh -c qemu:///system destroy " + name +
                "; virsh -c qemu:///system undefine " + name + "; echo");
    }
  } cleanup{name, own, daemon};
  auto defined = run_cli({"define", "-n", own, "--vcpus", "1", "--repair", "inline", "--verify-window", "3"});
  INFO(defined.out << defined.err);
  REQUIRE(defined.status == 0);
  CHECK_THAT(defined.out, Catch::Contains("Instance " + own + " defined"));
  CHECK(run_cli({"define", "-n", own + "x", "--kernel", "/nonexistent"}).status == 3);  // checked when defined
  CHECK(run_cli({"start", own + "x"}).status == 6);
  REQUIRE(run_cli({"autostart", own}).status == 0);
  auto listed = run_cli({"list", "--all", "--json"});
  json all = json::parse(listed.out, nullptr, false);
  REQUIRE(all.is_array());
  auto entry = std::find_if(all.begin(), all.end(), [&](const json& e) { return e.value("name", "") == own; });
  REQUIRE(entry != all.end());
  CHECK((*entry)["state"] == "shut off");
  CHECK((*entry)["autostart"] == true);
  REQUIRE(run_cli({"prepare", name, "--yes"}).status == 0);
  REQUIRE_THAT(virsh("start " + name), Catch::Contains("started"));

  // The unit it is meant to run under passes systemd's own check (with this build's binary).
  std::string unit = scratch_dir() + "/immortal.service";
  run_shell("sed 's|^ExecStart=[^ ]*|ExecStart=" IMMORTAL_BINARY "|' '" IMMORTAL_BUILD_ROOT "/immortal.service' > '" + unit +
            "'; echo");
  CHECK(run_shell("systemd-analyze verify '" + unit + "' 2>&1; echo \"status $?\"") == "status 0\n");

  // A domain that runs when the daemon starts is protected; the autostart instance is booted.
  std::string daemon_log = scratch_dir() + "/" + name + ".daemon";
  int metrics_port = free_port();
  daemon = spawn_immortal({"daemon", "--verify-window", "3", "--metrics-listen", "127.0.0.1:" + std::to_string(metrics_port)},
                          daemon_log);
  auto supervised_as = [&](const std::string& instance, const char* backend) {
    auto r = run_cli({"status", instance, "--json"}, 40s);
    json s = r.status == 0 ? json::parse(r.out, nullptr, false) : json();
    return s.is_object() && s.value("backend", "") == backend && s.value("state", "") == "running" &&
                   s.contains("recovery_state") && s["recovery_state"].value("armed", false)
               ? s.value("supervisor_pid", 0)
               : 0;
  };
  auto supervised = [&] { return supervised_as(name, "libvirt"); };
  int first = 0, own_first = 0;
  if (!wait_until([&] { return (first = supervised()) > 0 && (own_first = supervised_as(own, "qemu")) > 0; }, 240s))
    FAIL("not both protected; the daemon's log:\n" << read_file(daemon_log));
  auto injected = run_cli({"inject", name, "null-deref", "--wait", "--json"}, 200s);
  INFO(injected.out << injected.err);
  CHECK(injected.status == 0);
  injected = run_cli({"inject", own, "null-deref", "--wait", "--json"}, 200s);
  INFO(injected.out << injected.err);
  CHECK(injected.status == 0);

  // The host's one endpoint: both guests, each family once, accepted by promtool.
  std::string response = http_get(metrics_port, "/metrics", 30s);
  std::string exposition = response.substr(std::min(response.size(), response.find("\r\n\r\n") + 4));
  INFO(exposition);
  CHECK_THAT(exposition, Catch::Contains("immortal_recoveries_total{guest=\"" + name + "\"} 1\n") &&
                             Catch::Contains("immortal_recoveries_total{guest=\"" + own + "\"} 1\n") &&
                             Catch::Contains("immortal_crash_outcomes_total{guest=\"" + own +
                                             "\",kind=\"oops\",outcome=\"recovered\"} 1\n"));
  std::string file = scratch_dir() + "/" + name + ".host-metrics";
  std::ofstream(file) << exposition;
  CHECK(run_shell("promtool check metrics < '" + file + "' 2>&1; echo \"status $?\"") == "status 0\n");

  // Our own instance's supervisor killed: its VM ran on, and the daemon takes it over.
  ::kill(own_first, SIGKILL);
  int own_second = 0;
  if (!wait_until([&] { return (own_second = supervised_as(own, "qemu")) > 0 && own_second != own_first; }, 120s))
    FAIL("the autostart instance was not taken over; the daemon's log:\n" << read_file(daemon_log));

  // Its supervisor killed: the daemon attaches again.
  ::kill(first, SIGKILL);
  int second = 0;
  if (!wait_until([&] { return (second = supervised()) > 0 && second != first; }, 120s))
    FAIL("not attached again after its supervisor was killed; the daemon's log:\n" << read_file(daemon_log));

  // Saved and restored (virsh save/restore): protected again as it comes back.
  std::string image = scratch_dir() + "/" + name + ".save";
  CHECK_THAT(virsh("save " + name + " '" + image + "'"), Catch::Contains("saved"));
  if (!wait_until([&] { return !process_alive(second); }, 60s))
    FAIL("the supervisor did not end with the saved domain; the daemon's log:\n"
         << read_file(daemon_log) << "its threads:\n" << run_shell("gdb -p " + std::to_string(second) + " -batch -ex \"thread apply all bt 12\" 2>&1 | grep -v \"^\\\\[\" | head -120"));
  CHECK_THAT(virsh("restore '" + image + "'"), Catch::Contains("restored"));
  int third = 0;
  if (!wait_until([&] { return (third = supervised()) > 0 && third != second; }, 180s))
    FAIL("not attached again after the restore; the daemon's log:\n" << read_file(daemon_log));
  CHECK(run_cli({"unquarantine", name, "--all"}).status == 0);
  injected = run_cli({"inject", name, "bug", "--wait", "--json"}, 200s);
  INFO(injected.out << injected.err);
  CHECK(injected.status == 0);

  // SIGTERM: the supervisors let go of the domain, which runs on; our own guest is powered off.
  ::kill(daemon, SIGTERM);
  CHECK(wait_until([&] { return ::waitpid(daemon, nullptr, WNOHANG) == daemon; }, 60s));
  daemon = 0;
  CHECK(!process_alive(third));
  CHECK(!process_alive(own_second));
  CHECK_THAT(virsh("domstate " + name), Catch::Contains("running"));
  CHECK(wait_until([&] { return qemu_processes(own).empty(); }, 20s));
  CHECK(run_cli({"undefine", own}).status == 0);
  CHECK(run_cli({"undefine", own}).status == 6);
  ::unlink(image.c_str());
}

TEST_CASE("libvirt: a prepared domain as a fault campaign's guest, records disk and port added live, baselines included",
          "[integration][libvirt][campaign]") {
  ensure_libvirtd();
  std::string name = unique_name("lvcamp");
  define_domain(name, 512);
  struct Cleanup {
    std::string name;
    ~Cleanup() {
      // The campaign left the domain off already: quiet when there is nothing to destroy.
      run_shell("pkill -f '[i]mmortal attach.* " + name + "'; virsh -c qemu:///system destroy " + name +
                " >/dev/null 2>&1; virsh -c qemu:///system undefine " + name + "; echo");
    }
  } cleanup{name};
  std::string plan = scratch_dir() + "/libvirt-plan.toml";
  std::ofstream(plan) << "name = \"" << name << "\"\n[guest]\nlibvirt = \"" << name << "\"\n[recovery]\nverify_window = 2\n"
                      << "[baselines]\npanic_on_oops = [1, 0]\n"
                      << "[[faults]]\nsource = \"driver\"\ntypes = [\"null-deref\", \"mutex-held\"]\n";
  std::string out = scratch_dir() + "/libvirt.campaign";
  // Not prepared yet: refused, with the command that prepares it.
  auto unprepared = run_cli({"campaign", plan, "-o", out}, std::chrono::minutes(2));
  CHECK(unprepared.status != 0);
  CHECK_THAT(unprepared.err, Catch::Contains("immortal prepare " + name));
  REQUIRE(run_cli({"prepare", name, "--yes"}).status == 0);
  std::string definition = virsh("dumpxml --inactive " + name);

  auto r = run_cli({"campaign", plan, "-o", out, "--restart"}, std::chrono::minutes(20));
  INFO("stdout:\n" << r.out << "\nstderr:\n" << r.err);
  REQUIRE(r.status == 0);
  std::vector<std::string> seen;
  std::ifstream results(out + "/results.jsonl");
  for (std::string line; std::getline(results, line);) {
    json x = json::parse(line);
    INFO(x.dump());
    seen.push_back(x["phase"].get<std::string>() + " " + x["fault"].get<std::string>() + " " + x["outcome"].get<std::string>());
    CHECK(x.value("records_lost", 1) == 0);
    CHECK(x.value("records_acked", 0) > 0);  // the disk and the port, hot-plugged, carried the workload
    CHECK(x.value("workload_back", false));  // after the reset too: live devices stay with the VM
    CHECK(x.contains("guest_restarted") == (x["outcome"] == "device-hung"));  // powered off and on again only then
    if (x["outcome"] != "continued" && x["outcome"] != "device-hung") CHECK(x.contains("bundle"));
  }
  // Recovered in place; rebooted through libvirt's panic device (pvpanic, ISA); with
  // panic_on_oops=0 the kernel's own report, read from its log through the workload's port (a
  // domain's console is libvirt's, not ours), says it went on, and the device's mutex stayed held.
  CHECK(seen == std::vector<std::string>{"immortal null-deref recovered", "immortal mutex-held recovered",
                                         "panic_on_oops=1 null-deref rebooted", "panic_on_oops=1 mutex-held rebooted",
                                         "panic_on_oops=0 null-deref continued", "panic_on_oops=0 mutex-held device-hung"});
  // The campaign leaves the domain powered off and its definition as it was: the devices were live only.
  CHECK_THAT(virsh("domstate " + name), Catch::Contains("shut off"));
  CHECK(virsh("dumpxml --inactive " + name) == definition);
}
