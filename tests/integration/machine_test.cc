// The Machine seam against a real guest: QEMU (TCG here, KVM where it is fast) running Debian's
// kernel and our agent. One guest serves every check that cannot disturb the others.
#include "accelerator.h"
#include "agent_channel.h"
#include "harness.h"
#include "instance.h"
#include "qemu/qemu_machine.h"

#include <catch2/catch.hpp>

#include <fmt/format.h>
#include <poll.h>

#include <algorithm>
#include <cstring>
#include <iostream>
#include <random>

using namespace immortal;
using namespace immortal::vmm;
using namespace std::chrono_literals;

namespace {

struct Guest {
  InstanceDir dir;
  std::unique_ptr<qemu::QemuMachine> machine;
  std::unique_ptr<AgentChannel> agent;
  double boot_seconds = 0;

  static Guest boot(const std::string& name) {
    MachineConfig c;
    c.name = name;
    c.kernel = test::guest_dir() + "/vmlinuz";
    c.initrd = test::guest_dir() + "/initrd.img";
    c.append = "console=ttyS0";
    c.vcpus = 2;
    c.accelerator = choose_accelerator().accelerator;
    Guest g{InstanceDir::claim(test::test_runtime_root(), name), nullptr, nullptr};
    c.runtime_dir = g.dir.path();
    c.console_log = g.dir.file("console.log");
    auto start = Clock::now();
    g.machine = qemu::QemuMachine::launch(c, Deadline::in(30s));
    g.agent = std::make_unique<AgentChannel>(g.machine->connect_agent_channel(Deadline::in(5s)));
    g.machine->resume();
    auto deadline = Deadline::in(90s);
    while (!g.agent->hello()) {
      REQUIRE_FALSE(deadline.expired());
      wait_readable(g.agent->fd(), Deadline::in(100ms));
      g.agent->on_readable();
    }
    g.boot_seconds = std::chrono::duration<double>(Clock::now() - start).count();
    return g;
  }

  // Runs a command through the agent and waits for its result.
  agent::ExecResult exec(const std::vector<std::string>& argv) {
    std::optional<agent::ExecResult> result;
    std::string error;
    agent->exec(argv, 30'000, [&](const agent::ExecResult* r, const std::string& e) {
      if (r) result = *r;
      error = e;
    });
    auto deadline = Deadline::in(40s);
    while (!result && error.empty() && !deadline.expired()) {
      wait_readable(agent->fd(), Deadline::in(100ms));
      agent->on_readable();
    }
    INFO(error);
    REQUIRE(result);
    return *result;
  }
  std::string sh(const std::string& script) {
    auto r = exec({"sh", "-c", script});
    INFO(script << "\n" << r.stderr_data);
    REQUIRE(r.exit_code == 0);
    return r.stdout_data;
  }
};

// Scans all of guest RAM for a byte string; returns its guest-physical addresses.
std::vector<std::uint64_t> find_in_ram(const PhysicalMemory& ram, const std::string& needle) {
  std::vector<std::uint64_t> hits;
  const std::uint64_t chunk = 4 << 20;
  std::vector<std::byte> buf(chunk + needle.size());
  for (const auto& range : ram.ranges()) {
    for (std::uint64_t off = 0; off < range.size; off += chunk) {
      std::uint64_t len = std::min<std::uint64_t>(chunk + needle.size() - 1, range.size - off);
      ram.read(range.start + off, std::span(buf.data(), len));
      const char* data = reinterpret_cast<const char*>(buf.data());
      for (const char* p = data; (p = static_cast<const char*>(memmem(p, len - static_cast<std::size_t>(p - data), needle.data(), needle.size())));
           ++p) {
        std::uint64_t at = range.start + off + static_cast<std::uint64_t>(p - data);
        if (std::find(hits.begin(), hits.end(), at) == hits.end()) hits.push_back(at);
        if (static_cast<std::size_t>(p - data) + 1 >= len) break;
      }
    }
  }
  return hits;
}

std::string random_token(const char* prefix) {
  std::random_device rd;
  return fmt::format("{}-{:016x}{:08x}", prefix, (static_cast<std::uint64_t>(rd()) << 32) | rd(), rd());
}

}  // namespace

// Catch2 runs a test case once per SECTION: the guest is booted on the first run and shared.
Guest& shared_guest() {
  static std::unique_ptr<Guest> guest;
  if (!guest) guest = std::make_unique<Guest>(Guest::boot(test::unique_name("machine")));
  return *guest;
}

TEST_CASE("a supervised guest boots, and its vCPUs and RAM are reachable through the Machine seam",
          "[integration][machine]") {
  Guest& g = shared_guest();
  REQUIRE(g.machine->state() != RunState::shutdown);
  static bool reported = false;
  if (!std::exchange(reported, true))
    std::cout << fmt::format("boot → agent hello: {:.2f} s (kernel {})\n", g.boot_seconds, g.agent->hello()->kernel_release);
  CHECK(g.agent->hello()->boot_id.size() == 36);

  SECTION("exec round trip: output, errors and exit status come back") {
    auto r = g.exec({"sh", "-c", "echo out; echo err >&2; exit 7"});
    CHECK(r.stdout_data == "out\n");
    CHECK(r.stderr_data == "err\n");
    CHECK(r.exit_code == 7);
    auto missing = g.exec({"/no/such/program"});
    CHECK(missing.exit_code == 127);
    CHECK_THAT(missing.error, Catch::Contains("No such file"));
    auto killed = g.exec({"sh", "-c", "kill -9 $$"});
    CHECK(killed.signal == 9);
  }

  SECTION("registers of every vCPU are read through the gdbstub") {
    g.machine->pause();
    REQUIRE(g.machine->vcpu_count() == 2);
    for (int cpu = 0; cpu < g.machine->vcpu_count(); ++cpu) {
      X86Registers r = g.machine->read_registers(cpu);
      INFO("vCPU " << cpu << " rip " << std::hex << r.rip << " cr3 " << r.cr3);
      CHECK((r.cr0 & 0x80000001) == 0x80000001);  // paging and protected mode: Linux is running
      CHECK((r.efer & 0x500) == 0x500);           // long mode enabled and active
      CHECK(r.cr3 != 0);
      CHECK(r.rsp >= 0xffff800000000000ull);      // idle vCPUs sit on kernel stacks
      // Writing back what we read changes nothing; the guest keeps working below.
      g.machine->write_registers(cpu, r);
      CHECK(g.machine->read_registers(cpu).rip == r.rip);
    }
    g.machine->resume();
    CHECK(g.sh("echo alive") == "alive\n");
  }

  SECTION("a byte string the guest writes into RAM is found by the host") {
    std::string token = random_token("guest-wrote");
    g.sh("printf %s " + token + " > /tmp/marker");
    auto hits = find_in_ram(g.machine->memory(), token);
    INFO(token);
    CHECK_FALSE(hits.empty());
  }

  SECTION("bytes the host writes into guest RAM are read back by the guest") {
    std::string token = random_token("host-finds-me");
    std::string filler(64, '.');
    g.sh("printf %s " + token + filler + " > /tmp/page");
    auto hits = find_in_ram(g.machine->memory(), token + filler);
    REQUIRE_FALSE(hits.empty());
    std::string replacement = random_token("host-wrote").substr(0, 40);
    for (auto at : hits)
      g.machine->memory().write(at + token.size(), std::as_bytes(std::span(replacement.data(), replacement.size())));
    std::string seen = g.sh("cat /tmp/page");
    CHECK(seen.substr(token.size(), replacement.size()) == replacement);
  }

  SECTION("a hardware breakpoint stops the guest at a kernel function and reports the vCPU") {
    std::string line = g.sh("grep ' __x64_sys_getppid$' /proc/kallsyms");
    std::uint64_t address = std::stoull(line.substr(0, 16), nullptr, 16);
    REQUIRE(address >= 0xffffffff80000000ull);
    g.machine->pause();
    g.machine->insert_breakpoint(address);
    g.machine->resume();
    g.agent->exec({"sh", "-c", "echo $PPID"}, 30'000, [](const agent::ExecResult*, const std::string&) {});
    std::optional<MachineEvent> hit;
    auto deadline = Deadline::in(30s);
    while (!hit && !deadline.expired()) {
      std::vector<pollfd> fds;
      for (int fd : g.machine->event_fds()) fds.push_back({fd, POLLIN, 0});
      ::poll(fds.data(), fds.size(), 100);
      for (const auto& e : g.machine->drain_events())
        if (e.kind == MachineEvent::Kind::breakpoint) hit = e;
    }
    REQUIRE(hit);
    REQUIRE(hit->vcpu >= 0);
    CHECK(g.machine->state() == RunState::paused);
    CHECK(g.machine->read_registers(hit->vcpu).rip == address);
    g.machine->remove_breakpoint(address);
    g.machine->resume();
    CHECK(g.sh("echo resumed") == "resumed\n");
  }

  SECTION("terminating the machine leaves no QEMU process") {
    int pid = g.machine->process_id();
    REQUIRE(test::process_alive(pid));
    g.machine->terminate(2s);
    CHECK_FALSE(test::process_alive(pid));
    CHECK(test::qemu_processes(g.dir.name()).empty());
  }
}
