// The `immortal` command line as an operator uses it, against real guests: lifecycle, named
// instances, signals, and every kind of bad input the foundation issue lists.
#include "base/error.h"
#include "control/control_channel.h"
#include "instance_json.h"

#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <fstream>

using namespace immortal::test;
using namespace std::chrono_literals;
using nlohmann::json;

namespace {

std::string first_line(const std::string& text) { return text.substr(0, text.find('\n')); }

// The last line of stderr that is an error, i.e. not a progress line.
std::string error_line(const std::string& err) {
  std::string found;
  std::size_t pos = 0;
  while (pos < err.size()) {
    auto end = err.find('\n', pos);
    std::string line = err.substr(pos, end == std::string::npos ? std::string::npos : end - pos);
    bool progress = line.find("starting guest") != std::string::npos || line.find(": accelerator ") != std::string::npos;
    if (line.rfind("immortal: ", 0) == 0 && !progress) found = line;
    if (end == std::string::npos) break;
    pos = end + 1;
  }
  return found;
}

void require_nothing_left(const std::string& name) {
  CHECK(wait_until([&] { return qemu_processes(name).empty(); }, 10s));
  auto list = run_cli({"list"});
  CHECK(list.out.find(name) == std::string::npos);
}

// A guest whose "agent" is a shell script: it finds the agent's port and does what it is told.
std::string hostile_agent(const std::string& action) {
  return "for d in /sys/class/virtio-ports/*; do\n"
         "  [ \"$(cat $d/name)\" = org.immortal.agent.0 ] && port=/dev/${d##*/}\n"
         "done\n" +
         action + "\nexec sleep 100000\n";
}

}  // namespace

TEST_CASE("run --detach, list, status, exec and stop manage a named instance", "[integration][cli]") {
  std::string name = unique_name("cli");
  auto run = run_cli({"run", "--name", name, "--detach"});
  INFO(run.err);
  REQUIRE(run.status == 0);
  CHECK_THAT(run.out, Catch::Contains("is up") && Catch::Contains("kernel 6."));
  CHECK_THAT(run.err, Catch::Contains("accelerator"));

  auto list = run_cli({"list"});
  CHECK(list.status == 0);
  CHECK_THAT(list.out, Catch::Contains(name) && Catch::Contains("running"));

  json s = status_json(name);
  CHECK(s["state"] == "running");
  CHECK(s["agent"]["connected"] == true);
  CHECK(s["agent"]["protocol"] == 1);  // the version the agent spoke in its hello
  CHECK(s["backend"] == "qemu");
  CHECK(s["capabilities"] == json::array({"breakpoints", "native_dump", "shared_ram", "attach"}));
  int qemu_pid = s["vm_pid"].get<int>();
  REQUIRE(process_alive(qemu_pid));
  // Started by root, QEMU gave root up once its devices were open (-runas nobody), and its
  // seccomp filter is on.
  if (::geteuid() == 0) {
    std::string proc = read_file("/proc/" + std::to_string(qemu_pid) + "/status");
    CHECK_THAT(proc, Catch::Contains("Uid:\t65534\t65534\t65534\t65534") && Catch::Contains("Seccomp:\t2"));
  }
  CHECK(s["boot_id"].get<std::string>().size() == 36);

  auto exec = run_cli({"exec", name, "--", "sh", "-c", "echo hi; echo oops >&2; exit 5"});
  CHECK(exec.status == 5);
  CHECK(exec.out == "hi\n");
  CHECK_THAT(exec.err, Catch::Contains("oops"));
  auto uname = run_cli({"exec", name, "--", "uname", "-r"});
  CHECK(uname.status == 0);
  CHECK(uname.out == s["kernel_release"].get<std::string>() + "\n");
  auto missing = run_cli({"exec", name, "--", "/no/such/program"});
  CHECK(missing.status == 127);
  CHECK_THAT(missing.err, Catch::Contains("cannot execute /no/such/program"));

  auto slow = run_cli({"exec", name, "-t", "2", "--", "sleep", "30"});
  CHECK(slow.status == 8);
  CHECK_THAT(slow.err, Catch::Contains("killed after 2 s"));
  auto big = run_cli({"exec", name, "--", "head", "-c", "400000", "/dev/zero"});
  CHECK(big.status == 0);
  CHECK(big.out.size() == 256 * 1024);
  CHECK_THAT(big.err, Catch::Contains("output truncated"));
  CHECK(run_cli({"exec", name}).status == 2);  // no command
  CHECK(run_cli({"exec", name, "--"}).status == 2);
  // Arguments after -- reach the guest byte for byte: brackets, commas, empty strings, leading
  // dashes, non-ASCII, an argument that is itself "--".
  auto test_brackets = run_cli({"exec", name, "--", "sh", "-c", "[ -f /no/a ] || [ -f /no/b ] || echo neither"});
  CHECK(test_brackets.status == 0);
  CHECK(test_brackets.out == "neither\n");
  auto bracketed = run_cli({"exec", name, "--", "echo", "[1,2]"});
  CHECK(bracketed.out == "[1,2]\n");
  auto hostile = run_cli({"exec", name, "--", "printf", "<%s>", "", "-n", "a,b", "[x]", "--", "ünïcode", " sp "});
  CHECK(hostile.status == 0);
  CHECK(hostile.out == "<><-n><a,b><[x]><--><ünïcode>< sp >");

  // The fault driver refuses bad input with EINVAL and keeps working.
  auto guest = [&](const std::string& script) { return run_cli({"exec", name, "--", "sh", "-c", script}); };
  // dd writes each block with one write(2) and names the error it gets.
  for (const char* bad : {"printf bogus | dd of=/dev/immortal-fault bs=1k", "printf 'ping\\000x' | dd of=/dev/immortal-fault bs=1k",
                          "head -c 100 /dev/zero | tr '\\000' a | dd of=/dev/immortal-fault bs=1k",
                          "dd if=/dev/zero of=/dev/immortal-fault bs=1M count=1"}) {
    INFO(bad);
    auto r = guest(bad);
    CHECK(r.status != 0);
    CHECK_THAT(r.err, Catch::Contains("Invalid argument"));
  }
  auto ping = guest("printf ping > /dev/immortal-fault && printf 'ping\\n' > /dev/immortal-fault && cat /dev/immortal-fault");
  CHECK(ping.status == 0);
  CHECK(ping.out == "immortal_fault counter 2\n");
  CHECK(guest("dmesg | grep -E 'BUG|Oops|WARNING'").status == 1);
  // Unloading it while idle works; inject then says what is missing; it loads again. Each
  // change of the module list makes the supervisor collect the guest's profile again.
  auto profiles_saved = [&] {
    std::string log = read_file(test_runtime_root() + "/" + name + "/supervisor.log");
    std::size_t saved = 0;
    for (auto at = log.find("guest profile saved"); at != std::string::npos; at = log.find("guest profile saved", at + 1)) ++saved;
    return saved;
  };
  REQUIRE(wait_until([&] { return profiles_saved() >= 1; }, 30s));
  CHECK(guest("rmmod immortal_fault && test ! -e /dev/immortal-fault").status == 0);
  CHECK(wait_until([&] { return profiles_saved() >= 2; }, 30s));
  auto no_driver = run_cli({"inject", name, "null-deref"});
  CHECK(no_driver.status == 1);
  CHECK_THAT(no_driver.err, Catch::Contains("no fault-injection driver"));
  CHECK(guest("insmod /lib/modules/immortal_fault.ko && printf ping > /dev/immortal-fault").status == 0);
  CHECK(wait_until([&] { return profiles_saved() >= 3; }, 30s));
  CHECK(status_json(name)["state"] == "running");

  // A control request with fields of the wrong type is refused; the supervisor lives on.
  try {
    immortal::vmm::control_call(test_runtime_root() + "/" + name + "/control.sock",
                                {{"command", "exec"}, {"argv", {"true"}}, {"timeout_ms", "soon"}},
                                immortal::Deadline::in(std::chrono::seconds(10)));
    FAIL("accepted");
  } catch (const immortal::Error& e) {
    CHECK(e.code() == immortal::ExitCode::usage);
    CHECK_THAT(e.what(), Catch::Contains("malformed request"));
  }
  CHECK(status_json(name)["state"] == "running");

  auto again = run_cli({"run", "--name", name, "--detach"});
  CHECK(again.status != 0);
  CHECK_THAT(again.err, Catch::Contains("already running"));

  auto stop = run_cli({"stop", name});
  INFO(stop.err);
  CHECK(stop.status == 0);
  CHECK_FALSE(process_alive(qemu_pid));
  require_nothing_left(name);
  CHECK(run_cli({"status", name}).status == 6);
  CHECK(run_cli({"exec", name, "--", "true"}).status == 6);
}

TEST_CASE("killing the supervisor with SIGKILL leaves the guest running, and stop still ends it", "[integration][cli]") {
  std::string name = unique_name("sigkill");
  REQUIRE(run_cli({"run", "--name", name, "--detach"}).status == 0);
  json s = status_json(name);
  int supervisor = s["supervisor_pid"].get<int>();
  int qemu_pid = s["vm_pid"].get<int>();
  REQUIRE(process_alive(qemu_pid));
  REQUIRE(::kill(supervisor, SIGKILL) == 0);
  // The instance has no supervisor (its name is not listed) but its guest lives on.
  CHECK(wait_until([&] { return run_cli({"list"}).out.find(name) == std::string::npos; }, 10s));
  CHECK(process_alive(qemu_pid));
  // A new `run` of that name takes the guest over instead of starting another.
  auto rerun = run_cli({"run", "--name", name, "--detach"});
  INFO(rerun.err);
  CHECK(rerun.status == 0);
  CHECK(status_json(name).value("vm_pid", 0) == qemu_pid);
  CHECK(run_cli({"stop", name, "--force"}).status == 0);
  require_nothing_left(name);
}

TEST_CASE("SIGINT and SIGTERM stop a foreground supervisor and its guest", "[integration][cli]") {
  for (int sig : {SIGINT, SIGTERM}) {
    std::string name = unique_name("signal");
    std::string log = scratch_dir() + "/" + name + ".out";
    pid_t pid = spawn_immortal({"run", "--name", name}, log);
    REQUIRE(wait_until([&] { return read_file(log).find("is up") != std::string::npos; }, 90s));
    json s = status_json(name);
    int qemu_pid = s["vm_pid"].get<int>();
    REQUIRE(::kill(pid, sig) == 0);
    int status = 0;
    REQUIRE(::waitpid(pid, &status, 0) == pid);
    REQUIRE(WIFEXITED(status));
    CHECK(WEXITSTATUS(status) == 128 + sig);
    CHECK_THAT(read_file(log), Catch::Contains("guest stopped"));
    CHECK_FALSE(process_alive(qemu_pid));
    require_nothing_left(name);
  }
}

TEST_CASE("bad input gets one clear error line and a distinct exit status", "[integration][cli]") {
  std::string kernel = guest_dir() + "/vmlinuz", initrd = guest_dir() + "/initrd.img";
  std::string name = unique_name("bad");
  struct Case {
    const char* what;
    std::vector<std::string> args;
    int status;
    const char* message;
  };
  std::string garbage = scratch_dir() + "/garbage-kernel";
  std::ofstream(garbage) << "this is not a Linux kernel\n";
  const Case cases[] = {
      {"missing kernel", {"--kernel", "/nonexistent/vmlinuz", "--initrd", initrd}, 3, "cannot read kernel /nonexistent/vmlinuz"},
      {"kernel that is a directory", {"--kernel", "/", "--initrd", initrd}, 3, "cannot read kernel /: not a regular file"},
      {"missing initrd", {"--kernel", kernel, "--initrd", "/nonexistent/initrd"}, 3, "cannot read initrd /nonexistent/initrd"},
      {"memory size that cannot be parsed", {"--memory", "12Q"}, 2, "invalid memory size \"12Q\""},
      {"too little memory", {"--memory", "1M"}, 2, "too small"},
      {"QEMU binary missing", {"--qemu", "/nonexistent/qemu-system-x86_64"}, 4, "QEMU not found"},
      {"QEMU exiting at start", {"--kernel", garbage}, 4, "QEMU exited at start"},
      {"bad instance name", {"--name", "../escape"}, 2, "invalid instance name"},
      {"QEMU user that does not exist", {"--qemu-user", "no-such-user-here"}, 2, "no such user"},
      {"unknown option", {"--frobnicate"}, 2, "frobnicate"},
  };
  for (const auto& c : cases) {
    INFO(c.what);
    std::vector<std::string> args{"run"};
    if (std::find(c.args.begin(), c.args.end(), "--name") == c.args.end()) args.insert(args.end(), {"--name", name});
    args.insert(args.end(), c.args.begin(), c.args.end());
    auto r = run_cli(args, 60s);
    INFO(r.err);
    CHECK(r.status == c.status);
    std::string line = c.status == 2 && std::string(c.what) == "unknown option" ? first_line(r.err) : error_line(r.err);
    CHECK_THAT(line, Catch::Contains(c.message));
    require_nothing_left(name);
  }
}

TEST_CASE("an agent that never answers ends the start with a clear error and no QEMU left", "[integration][cli]") {
  std::string name = unique_name("silent");
  auto r = run_cli({"run", "--name", name, "--initrd", initrd_with_agent_script("exec sleep 100000\n"),
                     "--boot-timeout", "15"},
                    120s);
  CHECK(r.status == 5);
  CHECK_THAT(error_line(r.err), Catch::Contains("did not say hello within 15 s"));
  CHECK_THAT(r.err, Catch::Contains("rcS: guest ready"));  // the console's last lines explain
  require_nothing_left(name);
}

TEST_CASE("a malformed or oversized agent frame is refused and ends the start cleanly", "[integration][cli]") {
  struct Case {
    const char* what;
    const char* action;
    const char* message;
  };
  const Case cases[] = {
      {"garbage", "printf 'GARBAGE, NOT A FRAME' > $port", "bad frame magic"},
      {"oversized", "printf 'IMRT\\001\\000\\001\\000\\377\\377\\377\\177' > $port", "exceeds the limit"},
      {"hello that is not JSON", "printf 'IMRT\\001\\000\\001\\000\\005\\000\\000\\000{{{{{' > $port", "not valid JSON"},
  };
  for (const auto& c : cases) {
    INFO(c.what);
    std::string name = unique_name("hostile");
    auto r = run_cli({"run", "--name", name, "--initrd", initrd_with_agent_script(hostile_agent(c.action)),
                       "--boot-timeout", "60"},
                      120s);
    INFO(r.err);
    CHECK(r.status == 5);
    CHECK_THAT(error_line(r.err), Catch::Contains("broke the protocol") && Catch::Contains(c.message));
    require_nothing_left(name);
  }
}
