// Where crashes are analysed (issue 7): the inline repair process, sandboxed, gives the same
// recoveries as the repair VM without a second VM; a hostile guest that corrupts the structures
// an analyser walks is rebooted with its bundle, in bounded time, and the supervisor stays
// responsive. (The repair VM itself, its cross-check with the inline engine and its fallback are
// exercised by every crash of recovery_test.cc.)
#include "instance_json.h"
#include "supervisor_probe.h"
#include "base/budgets.h"
#include "base/unique_fd.h"
#include "recovery/arena_pool.h"

#include <bpf/btf.h>
#include <catch2/catch.hpp>
#include <fmt/format.h>

#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>
#include <nlohmann/json.hpp>

#include <cstdio>
#include <filesystem>
#include <memory>
#include <sstream>
#include <thread>

using namespace immortal::test;
using namespace std::chrono_literals;
using nlohmann::json;

namespace {

json events_of(const std::string& name, const std::string& kind) {
  json out = json::array();
  std::istringstream in(run_cli({"events", name, "--json"}, 20s).out);
  for (std::string line; std::getline(in, line);)
    if (auto j = json::parse(line, nullptr, false); !j.is_discarded() && j.value("event", "") == kind) out.push_back(j);
  return out;
}

std::uint64_t recovered(const std::string& name) {
  return status_json(name).value("recovery_state", json::object()).value("recovered", std::uint64_t{0});
}

bool inline_ready(const std::string& name) {
  return status_json(name).value("repair", json::object()).value("inline", json::object()).value("state", "") == "ready";
}

struct InlineGuest {
  std::string name;
};

InlineGuest& inline_guest() {
  static InlineGuest g;
  if (!g.name.empty()) return g;
  g.name = unique_name("inline");
  auto run = run_cli({"run", "--name", g.name, "--detach", "--repair", "inline"});
  INFO(run.err);
  REQUIRE(run.status == 0);
  REQUIRE(wait_until([&] { return inline_ready(g.name); }, 60s));
  return g;
}

// What issue 18 asks of the supervisor under a hostile guest, measured: it kept answering
// status (95% within 1 s; the slowest within 10 s, for a machine shared with other guests), its
// own memory grew by at most 64 MiB, and its bundle snapshots stayed within their budget: one
// prepared arena plus budget::kBundleJobs copies being written, each at most the guest's RAM
// (an unfiltered copy, when the page-class agent cannot say which pages to leave out).
void check_supervisor_held_up(const ProbeResult& r) {
  INFO(r.describe());
  std::printf("supervisor under a hostile guest: %s\n", r.describe().c_str());
  CHECK(r.answers > 0);
  CHECK(r.failures == 0);
  CHECK(r.p95_ms < 1000);
  CHECK(r.max_ms < 10000);
  CHECK(r.max.own_kib <= r.start.own_kib + 64 * 1024);
  CHECK(r.start.guest_ram_kib > 0);
  CHECK(r.max.snapshots_kib <= (immortal::budget::kBundleJobs + 1) * r.start.guest_ram_kib);
}

// A BTF as guest root can forge it: no kernel type but a task_struct whose members embed one
// anonymous struct in itself 40 times a level, 16 levels deep (a naive member lookup visits
// 40^16 members), in base64 for the agent's text-only commands.
std::string forged_btf_base64() {
  std::unique_ptr<struct btf, void (*)(struct btf*)> b(btf__new_empty(), btf__free);
  REQUIRE(b);
  int int_id = btf__add_int(b.get(), "int", 4, BTF_INT_SIGNED);
  int inner = btf__add_struct(b.get(), nullptr, 4);
  REQUIRE(btf__add_field(b.get(), "x", int_id, 0, 0) == 0);
  for (int level = 1; level <= 16; ++level) {
    int outer = btf__add_struct(b.get(), nullptr, 4);
    for (int k = 0; k < 40; ++k) REQUIRE(btf__add_field(b.get(), nullptr, inner, 0, 0) == 0);
    inner = outer;
  }
  REQUIRE(btf__add_struct(b.get(), "task_struct", 4) > 0);
  for (int k = 0; k < 40; ++k) REQUIRE(btf__add_field(b.get(), nullptr, inner, 0, 0) == 0);
  REQUIRE(btf__add_field(b.get(), "pid", int_id, 0, 0) == 0);
  __u32 size = 0;
  const auto* raw = static_cast<const unsigned char*>(btf__raw_data(b.get(), &size));
  REQUIRE(raw);
  static const char* digits = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  std::string out;
  for (std::size_t i = 0; i < size; i += 3) {
    std::uint32_t v = raw[i] << 16 | (i + 1 < size ? raw[i + 1] << 8 : 0) | (i + 2 < size ? raw[i + 2] : 0);
    out += digits[v >> 18 & 63];
    out += digits[v >> 12 & 63];
    out += i + 1 < size ? digits[v >> 6 & 63] : '=';
    out += i + 2 < size ? digits[v & 63] : '=';
  }
  return out;
}

}  // namespace

TEST_CASE("repair inline: the engine runs in a sandboxed process and recovers crashes, text-corruption too",
          "[integration][repair]") {
  auto& g = inline_guest();
  json repair = status_json(g.name)["repair"];
  INFO(repair.dump(1));
  CHECK(repair.value("mode", "") == "inline");
  CHECK(!repair.contains("vm"));
  CHECK(qemu_processes(g.name + "-repair").empty());  // no repair VM in this mode
  int pid = repair["inline"].value("pid", 0);
  REQUIRE(pid > 0);
  std::string proc = read_file("/proc/" + std::to_string(pid) + "/status");
  CHECK_THAT(proc, Catch::Contains("Seccomp:\t2"));  // filter mode
  CHECK_THAT(proc, Catch::Contains("NoNewPrivs:\t1"));
  // Root's supervisor starts it as root; it is nobody by the time it parses anything.
  if (::geteuid() == 0) CHECK_THAT(proc, Catch::Contains("Uid:\t65534\t65534\t65534\t65534"));
  std::string limits = read_file("/proc/" + std::to_string(pid) + "/limits");
  CHECK_THAT(limits, Catch::Matches("(.|\n)*Max file size +16777216 +16777216(.|\n)*"));
  CHECK_THAT(limits, !Catch::Matches("(.|\n)*Max address space +unlimited(.|\n)*"));
  // Guest RAM is mapped there read-only; the mailbox is its only writable shared memory.
  std::istringstream maps(read_file("/proc/" + std::to_string(pid) + "/maps"));
  int ram_maps = 0, writable_shared = 0;
  for (std::string line; std::getline(maps, line);) {
    std::istringstream fields(line);
    std::string range, perms;
    fields >> range >> perms;
    if (line.find("immortal-ram") != std::string::npos) {
      ++ram_maps;
      CHECK(perms == "r--s");
    }
    if (perms.size() == 4 && perms[1] == 'w' && perms[3] == 's') {
      ++writable_shared;
      CHECK_THAT(line, Catch::Contains("immortal-repair-mailbox"));
    }
  }
  CHECK(ram_maps == 1);
  CHECK(writable_shared == 1);
  // The kernel image's symbols, the kernel's BTF and its image's ORC tables are read from the
  // host's one file of each (read-only), not kept in copies of its own (repair/shared_kernel_files.h).
  std::string mapped = read_file("/proc/" + std::to_string(pid) + "/maps");
  CHECK_THAT(mapped, Catch::Contains("/.repair-shared/kernel-symbols-v1-"));
  CHECK_THAT(mapped, Catch::Contains("/.repair-shared/kernel-btf-v1-"));
  CHECK_THAT(mapped, Catch::Contains("/.repair-shared/kernel-orc-v1-"));
  auto readies = events_of(g.name, "repair-ready");
  REQUIRE(!readies.empty());
  CHECK_THAT(readies.back().value("agent", ""), Catch::Contains("symbols (shared), types (shared), unwind tables (shared)"));

  for (const char* cls : {"null-deref", "text-corruption", "mutex-held"}) {
    INFO("class " << cls);
    REQUIRE(run_cli({"unquarantine", g.name, "--all"}).status == 0);
    std::uint64_t before = recovered(g.name);
    inject(g.name, cls);
    REQUIRE(wait_until([&] { return recovered(g.name) == before + 1; }, 60s));
    json crash = events_of(g.name, "crash").back();
    CHECK(crash["repair"].value("mode", "") == "inline");
    if (std::string(cls) == "text-corruption")
      CHECK(events_of(g.name, "plan").back()["plan"]["actions"][0].value("action", "") == "restore-code");
  }
  // The text was put back: the driver's function works again.
  CHECK(run_cli({"exec", g.name, "--", "sh", "-c", "echo ping > /dev/immortal-fault"}).status != 0);  // still quarantined (mutex-held)
  REQUIRE(run_cli({"unquarantine", g.name, "--all"}).status == 0);
  CHECK(run_cli({"exec", g.name, "--", "sh", "-c", "echo ping > /dev/immortal-fault"}).status == 0);
}

TEST_CASE("repair inline: a call the sandbox forbids kills the agent; the crash it was analysing reboots the guest "
          "with a bundle, and the agent is started again", "[integration][repair]") {
  std::string name = unique_name("canary");
  // The agent's canary (IMMORTAL_SANDBOX_CANARY=1): on its first request it calls socket().
  ::setenv("IMMORTAL_SANDBOX_CANARY", "1", 1);
  auto run = run_cli({"run", "--name", name, "--detach", "--repair", "inline"});
  ::unsetenv("IMMORTAL_SANDBOX_CANARY");
  INFO(run.err);
  REQUIRE(run.status == 0);
  REQUIRE(wait_until([&] { return inline_ready(name); }, 60s));
  std::string boot = status_json(name).value("boot_id", "");
  auto injected = run_cli({"inject", name, "null-deref", "--wait", "--json"}, 200s);
  INFO(injected.out << injected.err);
  CHECK(injected.status == 7);  // rebooted: with --repair inline there is no other engine
  json failed = events_of(name, "repair-failed").empty() ? json() : events_of(name, "repair-failed").back();
  INFO(failed.dump());
  CHECK_THAT(failed.value("error", ""), Catch::Contains("a system call its sandbox forbids"));
  CHECK(wait_until([&] { json s = status_json(name); return s.value("state", "") == "running" && s.value("boot_id", boot) != boot; },
                   120s));
  CHECK(wait_until([&] { return !events_of(name, "bundle").empty(); }, 60s));
  // The bundle's report agent (the same sandbox, the same canary) died too: the bundle is still
  // complete, its vmcore written, and its report says why it has no kernel details.
  if (!events_of(name, "bundle").empty()) {
    std::string path = events_of(name, "bundle").back().value("path", "");
    INFO("bundle " << path);
    json report = json::parse(read_file(path + "/report.json"), nullptr, false);
    REQUIRE(report.is_object());
    CHECK_THAT(report.value("problems", json::array()).dump(), Catch::Contains("the report agent made a system call its sandbox forbids"));
    CHECK(report.value("vmcore", json::object()).value("bytes", 0) > 1'000'000);
    CHECK(run_cli({"diag", path}).status == 0);
  }
  // The failed worker is started again (after its back-off) and is ready for the next crash.
  CHECK(wait_until([&] { return inline_ready(name); }, 120s));
  // `immortal ps` walks the guest in an introspection agent: the same sandbox, the same canary.
  // The request fails and says why; the guest runs on.
  auto ps = run_cli({"ps", name});
  CHECK(ps.status != 0);
  CHECK_THAT(ps.err, Catch::Contains("a system call its sandbox forbids"));
  CHECK(status_json(name).value("state", "") == "running");
  CHECK(run_cli({"stop", name, "--force"}).status == 0);
}

TEST_CASE("repair VM: the process analysing a crash dies (the canary); the crash reboots the guest with a bundle, and "
          "the same repair VM serves on",
          "[integration][repair]") {
  std::string name = unique_name("vmcanary");
  // With IMMORTAL_SANDBOX_CANARY=1 the supervisor puts it on the repair VM's kernel command line,
  // its agent's environment: each process it forks to analyse a crash dies of SIGSEGV, as if a
  // guest's crafted memory had crashed the engine. pid 1 must answer for it and serve on.
  ::setenv("IMMORTAL_SANDBOX_CANARY", "1", 1);
  auto run = run_cli({"run", "--name", name, "--detach"});
  ::unsetenv("IMMORTAL_SANDBOX_CANARY");
  INFO(run.err);
  REQUIRE(run.status == 0);
  auto vm = [&] { return status_json(name).value("repair", json::object()).value("vm", json::object()); };
  REQUIRE(wait_until([&] { return vm().value("state", "") == "ready"; }, 120s));
  int vm_pid = vm().value("pid", 0);
  REQUIRE(vm_pid > 0);
  std::string boot = status_json(name).value("boot_id", "");
  auto vm_readies = [&] {
    int n = 0;
    for (const json& e : events_of(name, "repair-ready")) n += e.value("mode", "") == "vm";
    return n;
  };
  int readies = vm_readies();
  auto injected = run_cli({"inject", name, "null-deref", "--wait", "--json"}, 200s);
  INFO(injected.out << injected.err);
  CHECK(injected.status == 7);  // rebooted: the analysis gave no plan
  json crash = events_of(name, "crash").empty() ? json() : events_of(name, "crash").back();
  INFO(crash.dump());
  CHECK(crash.value("repair", json::object()).value("mode", "") == "vm");
  CHECK_THAT(crash.value("repair", json::object()).value("error", ""),
             Catch::Contains("the process analysing the crash was killed by signal 11"));
  CHECK(wait_until([&] { json s = status_json(name); return s.value("state", "") == "running" && s.value("boot_id", boot) != boot; },
                   120s));
  // The new boot's profile is loaded in place by the same VM (its pid 1 took the reload from the
  // next forked process), which is ready for the next crash.
  CHECK(wait_until([&] { return vm_readies() > readies && vm().value("state", "") == "ready"; }, 180s));
  CHECK(vm().value("pid", 0) == vm_pid);
  CHECK(wait_until([&] { return !events_of(name, "bundle").empty(); }, 60s));
  CHECK(run_cli({"stop", name, "--force"}).status == 0);
}

TEST_CASE("repair VM: it never sees the guest's RAM (768 MiB, not a power of two): a profile is loaded from a snapshot "
          "taken for it, a crash is read from its snapshot in the host's arena; with every arena busy, the crash is "
          "analysed inline",
          "[integration][repair]") {
  std::string name = unique_name("arenas");
  // RAM that is not a power of two: no PCI window could show it whole, and the VM needs none.
  auto run = run_cli({"run", "--name", name, "--detach", "--memory", "768M"});
  INFO(run.err);
  REQUIRE(run.status == 0);
  auto vm_ready = [&] {
    return status_json(name).value("repair", json::object()).value("vm", json::object()).value("state", "") == "ready";
  };
  REQUIRE(wait_until(vm_ready, 120s));
  // The kernel image's symbols and the kernel's BTF are the host's one copy each
  // (repair/shared_kernel_files.h), which the VM's agent reads in its windows rather than keeping
  // its own.
  auto readies = events_of(name, "repair-ready");
  REQUIRE(!readies.empty());
  CHECK_THAT(readies.back().value("agent", ""), Catch::Contains("symbols (shared), types (shared), unwind tables (shared)"));
  // No window onto the guest's RAM: the agent loaded the profile from a snapshot the supervisor
  // took into one of the host's arenas for it, and gave it back.
  CHECK_THAT(readies.back().value("agent", ""), Catch::Contains("from a snapshot"));
  json vm_status = status_json(name).value("repair", json::object()).value("vm", json::object());
  INFO(vm_status.dump());
  CHECK(vm_status.value("guest_ram_window", true) == false);
  CHECK(vm_status.value("load", json::object()).value("read", "") == "a snapshot of the guest");
  CHECK(vm_status.value("load", json::object()).value("pages", 0) > 1000);
  // The guest was paused for that copy, and the supervisor says so.
  auto load_snapshots = events_of(name, "repair-load-snapshot");
  REQUIRE(!load_snapshots.empty());
  INFO(load_snapshots.back().dump());
  CHECK(load_snapshots.back().value("pages", 0) == vm_status["load"].value("pages", -1));
  CHECK(load_snapshots.back().value("paused_round_trip_ms", 0.0) > 0);
  json profile = status_json(name).value("profile", json::object());
  json symbols = profile.value("kernel_symbols", json::object()), types = profile.value("kernel_types", json::object()),
       unwind = profile.value("kernel_unwind_tables", json::object());
  INFO(symbols.dump() << "\n" << types.dump() << "\n" << unwind.dump());
  CHECK(symbols.value("shared", false));
  CHECK_THAT(symbols.value("file", ""), Catch::Contains("/.repair-shared/kernel-symbols-v1-"));
  CHECK(symbols.value("symbols", 0) > 10000);
  CHECK(types.value("shared", false));
  CHECK_THAT(types.value("file", ""), Catch::Contains("/.repair-shared/kernel-btf-v1-"));
  CHECK(types.value("types", 0) > 10000);
  CHECK(unwind.value("shared", false));
  CHECK_THAT(unwind.value("file", ""), Catch::Contains("/.repair-shared/kernel-orc-v1-"));
  CHECK(unwind.value("entries", 0) > 10000);
  // So the repair payload is the guest's own part of the profile: it leaves the image's symbols
  // and the BTF to those files, and the agents read them there (the summary above).
  json image = status_json(name).value("repair", json::object()).value("image", json::object());
  INFO(image.dump());
  CHECK(image.value("kernel_parts_from_host", json::array()) == json::array({"kernel BTF", "kernel image symbols", "kernel image unwind tables"}));
  CHECK_FALSE(image.contains("kernel_parts_kept"));
  auto text = run_cli({"status", name});
  CHECK_THAT(text.out, Catch::Contains("Repair payload:") && Catch::Contains("the guest's part (from the host's files: kernel BTF"));
  CHECK_THAT(text.out, Catch::Contains("Unwind tables:  the host's copy"));
  CHECK_THAT(text.out, Catch::Contains("Repair VM:      reads snapshots only (no window onto the guest's RAM); last profile loaded "
                                       "from a snapshot of"));
  // The pool's first arena is prepared once the page-class agent has classified the guest.
  std::string pool = immortal::vmm::ArenaPool::directory_for(test_runtime_root());
  auto prepared = [&](int i) {
    std::uint64_t bytes = 0;
    immortal::UniqueFd fd(::open(fmt::format("{}/arena-{}.prepared", pool, i).c_str(), O_RDONLY | O_CLOEXEC));
    return fd && ::pread(fd.get(), &bytes, sizeof bytes, 0) == sizeof bytes ? bytes : 0;
  };
  REQUIRE(wait_until([&] { return prepared(0) > 0; }, 120s));
  auto last_memory = [&](const char* mode = "vm") {
    json crash = last_event_of(name, "crash");
    INFO(crash.dump().substr(0, 2000));
    CHECK(crash.value("repair", json::object()).value("mode", "") == mode);
    return crash.value("repair", json::object()).value("memory", json::object());
  };
  auto recovered = [&] {
    REQUIRE(run_cli({"unquarantine", name, "--all"}).status == 0);
    REQUIRE(wait_until(vm_ready, 60s));
    auto injected = run_cli({"inject", name, "null-deref", "--wait", "--json"}, 200s);
    INFO(injected.out << injected.err);
    return injected.status == 0 && json::parse(injected.out, nullptr, false).value("outcome", "") == "recovered";
  };
  CHECK(recovered());
  json memory = last_memory();
  INFO(memory.dump());
  CHECK(memory.value("read", "") == "snapshot");
  CHECK(memory.value("code_pages_from_healthy_copy", 0) > 0);

  // Both arenas held, as two bundles being written on the host would hold them (another
  // supervisor's, here this test's own locks): the copy goes into memory of its own, which the VM
  // cannot see, and it sees nothing else of the guest: the sandboxed inline process, which maps
  // the guest's RAM, analyses the crash instead, and says why.
  std::vector<immortal::UniqueFd> held;
  for (int i = 0; i < 2; ++i) {
    held.emplace_back(::open(fmt::format("{}/arena-{}", pool, i).c_str(), O_RDONLY | O_CLOEXEC));
    REQUIRE(held.back());
    REQUIRE(wait_until([&] { return ::flock(held.back().get(), LOCK_EX | LOCK_NB) == 0; }, 60s));  // a bundle may still be written
  }
  CHECK(recovered());
  memory = last_memory("inline");
  INFO(memory.dump());
  CHECK(memory.value("read", "") == "guest RAM");
  json fallback = last_event_of(name, "repair-fallback");
  INFO(fallback.dump());
  CHECK(fallback.value("from", "") == "vm");
  CHECK(fallback.value("to", "") == "inline");
  CHECK_THAT(fallback.value("why", ""), Catch::Contains("not in the host's arenas"));
  held.clear();
  // Free again: the next crash is read from its snapshot once more.
  CHECK(recovered());
  CHECK(last_memory().value("read", "") == "snapshot");
  CHECK(run_cli({"stop", name, "--force"}).status == 0);
}

TEST_CASE("repair VM shared (--repair-vm-shared): two guests of one kernel share one repair VM, each crash is analysed "
          "there from its snapshot, a freed slot serves a new guest, a full VM makes the next guest start a second one, and the "
          "last guest to stop ends each VM",
          "[integration][repair]") {
  std::vector<std::string> names = {unique_name("shared-a"), unique_name("shared-b"), unique_name("shared-c")};
  auto start = [&](const std::string& name) {
    auto run = run_cli({"run", "--name", name, "--detach", "--repair-vm-shared"});
    INFO(run.err);
    REQUIRE(run.status == 0);
  };
  auto vm_of = [&](const std::string& name) {
    return status_json(name).value("repair", json::object()).value("vm", json::object());
  };
  auto ready = [&](const std::string& name) { return vm_of(name).value("state", "") == "ready"; };
  auto alive = [](int pid) { return pid > 0 && ::kill(pid, 0) == 0 && read_file(fmt::format("/proc/{}/stat", pid)).find(") Z") == std::string::npos; };
  // A crash analysed in the shared VM, from its snapshot in one of the host's arenas.
  auto recovered_in_vm = [&](const std::string& name, const char* cls = "null-deref") {
    REQUIRE(run_cli({"unquarantine", name, "--all"}).status == 0);
    REQUIRE(wait_until([&] { return ready(name); }, 60s));
    std::size_t bundles = events_of(name, "bundle").size();
    auto injected = run_cli({"inject", name, cls, "--wait", "--json"}, 200s);
    INFO(name << ": " << injected.out << injected.err);
    CHECK(injected.status == 0);
    CHECK(json::parse(injected.out, nullptr, false).value("outcome", "") == "recovered");
    json crash = last_event_of(name, "crash").value("repair", json::object());
    INFO(crash.dump().substr(0, 1500));
    CHECK(crash.value("mode", "") == "vm");
    CHECK(crash.value("memory", json::object()).value("read", "") == "snapshot");
    // Its bundle written: the arenas are free for the next guest's crash.
    CHECK(wait_until([&] { return events_of(name, "bundle").size() > bundles; }, 120s));
  };

  start(names[0]);
  start(names[1]);
  REQUIRE(wait_until([&] { return ready(names[0]) && ready(names[1]); }, 180s));
  json a = vm_of(names[0]).value("shared", json::object()), b = vm_of(names[1]).value("shared", json::object());
  INFO(a.dump() << "\n" << b.dump());
  const int qemu = a.value("qemu_pid", 0);
  CHECK(qemu > 0);
  CHECK(b.value("qemu_pid", -1) == qemu);  // one VM
  CHECK(a.value("dir", "") == b.value("dir", "x"));
  CHECK(a.value("slot", -1) != b.value("slot", -1));
  CHECK(a.value("started_here", false) != b.value("started_here", false));
  CHECK(vm_of(names[1]).value("guest_ram_window", true) == false);
  CHECK(events_of(names[0], "repair-starting").back().value("shared", false));
  CHECK_THAT(run_cli({"status", names[1]}).out, Catch::Contains("shared with") && Catch::Contains(fmt::format("QEMU pid {}", qemu)));
  recovered_in_vm(names[0]);
  recovered_in_vm(names[1]);

  // The guest that started the VM leaves: the VM goes on serving the other, and a new guest takes
  // the free slot (its agent of the old guest ended, a fresh one loads the new guest's profile).
  const int freed = a.value("slot", -1);
  REQUIRE(run_cli({"stop", names[0], "--force"}).status == 0);
  CHECK(alive(qemu));
  start(names[2]);
  REQUIRE(wait_until([&] { return ready(names[2]); }, 180s));
  json c = vm_of(names[2]).value("shared", json::object());
  INFO(c.dump());
  CHECK(c.value("qemu_pid", -1) == qemu);
  CHECK(c.value("slot", -1) == freed);
  recovered_in_vm(names[2]);
  // A module change: the slot loads the new profile in place, from a new snapshot, and serves on.
  std::size_t readies = events_of(names[1], "repair-ready").size();
  REQUIRE(run_cli({"exec", names[1], "--", "sh", "-c", "rmmod lkdtm; insmod /lib/modules/lkdtm.ko"}, 60s).status == 0);
  REQUIRE(wait_until([&] { return events_of(names[1], "repair-ready").size() > readies && ready(names[1]); }, 120s));
  CHECK_THAT(events_of(names[1], "repair-image").back().value("reload", ""), Catch::Contains("in place"));
  CHECK_THAT(events_of(names[1], "repair-ready").back().value("agent", ""), Catch::Contains("from a snapshot"));
  CHECK(vm_of(names[1]).value("shared", json::object()).value("qemu_pid", -1) == qemu);
  // Code put back from the healthy copy as the new payload holds it, in the slot's file.
  recovered_in_vm(names[1], "text-corruption");
  CHECK(events_of(names[1], "plan").back()["plan"]["actions"][0].value("action", "") == "restore-code");

  // Every slot taken (the other six held here, as six more supervisors would): a fourth guest
  // starts the kernel's second shared VM, and is protected all the same.
  auto hold_slots = [](const std::string& dir, std::vector<immortal::UniqueFd>& into) {
    std::filesystem::create_directories(dir);
    std::size_t before = into.size();
    for (int k = 0; k < 8; ++k) {
      immortal::UniqueFd fd(::open(fmt::format("{}/slot-{}.lock", dir, k).c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600));
      REQUIRE(fd);
      if (::flock(fd.get(), LOCK_EX | LOCK_NB) == 0) into.push_back(std::move(fd));
    }
    return into.size() - before;
  };
  const std::string first_dir = a.value("dir", "");
  REQUIRE(first_dir.size() > 2);
  REQUIRE(first_dir.substr(first_dir.size() - 2) == "-0");
  const std::string key_dir = first_dir.substr(0, first_dir.size() - 1);  // .../repair-vm-KEY-
  std::vector<immortal::UniqueFd> taken;
  CHECK(hold_slots(first_dir, taken) == 6);
  std::string fourth = unique_name("shared-d");
  start(fourth);
  REQUIRE(wait_until([&] { return ready(fourth); }, 180s));
  json d = vm_of(fourth).value("shared", json::object());
  INFO(d.dump());
  CHECK(d.value("dir", "") == key_dir + "1");
  CHECK(d.value("instance", -1) == 1);
  CHECK(d.value("started_here", false));
  const int second_qemu = d.value("qemu_pid", 0);
  CHECK(second_qemu > 0);
  CHECK(second_qemu != qemu);
  CHECK(events_of(fourth, "repair-starting").back().value("shared", false));
  recovered_in_vm(fourth);

  // Every slot of every shared VM of this kernel taken: a fifth guest gets a repair VM of its own.
  for (int n = 1; n < 16; ++n) hold_slots(key_dir + std::to_string(n), taken);
  CHECK(taken.size() == 6 + 7 + 14 * 8);
  std::string fifth = unique_name("shared-e");
  start(fifth);
  REQUIRE(wait_until([&] { return ready(fifth); }, 180s));
  CHECK_FALSE(vm_of(fifth).contains("shared"));
  CHECK(vm_of(fifth).value("pid", 0) != qemu);
  CHECK(vm_of(fifth).value("pid", 0) != second_qemu);
  CHECK_FALSE(events_of(fifth, "repair-starting").back().value("shared", false));
  CHECK(run_cli({"stop", fifth, "--force"}).status == 0);
  taken.clear();
  // The second VM's only guest stops: it ends that VM, and the first one serves on.
  REQUIRE(run_cli({"stop", fourth, "--force"}).status == 0);
  CHECK(wait_until([&] { return !alive(second_qemu); }, 30s));
  CHECK(alive(qemu));

  // The last guest to stop ends it.
  REQUIRE(run_cli({"stop", names[1], "--force"}).status == 0);
  CHECK(alive(qemu));
  REQUIRE(run_cli({"stop", names[2], "--force"}).status == 0);
  CHECK(wait_until([&] { return !alive(qemu); }, 30s));
}

TEST_CASE("repair: a module load and unload storm: the supervisor answers throughout, the profile settles, and "
          "the next crash is still recovered",
          "[integration][repair]") {
  auto& g = inline_guest();
  std::uint64_t before = status_json(g.name).value("profile", json::object()).value("number", std::uint64_t{0});
  // Every load and unload changes the guest's modules, each change asks for a new profile.
  REQUIRE(run_cli({"exec", g.name, "--", "sh", "-c",
                   "(for i in $(seq 25); do rmmod lkdtm; insmod /lib/modules/lkdtm.ko; done; touch /tmp/storm-over) "
                   "</dev/null >/dev/null 2>&1 &"})
              .status == 0);
  SupervisorProbe probe(g.name);
  bool over = false;
  int answers = 0;
  for (auto deadline = std::chrono::steady_clock::now() + 240s; !over && std::chrono::steady_clock::now() < deadline;) {
    json s = status_json(g.name);  // each within 20 s, or empty
    REQUIRE_FALSE(s.empty());
    ++answers;
    over = run_cli({"exec", g.name, "--", "test", "-e", "/tmp/storm-over"}, 30s).status == 0;
  }
  REQUIRE(over);
  check_supervisor_held_up(probe.stop());
  // The profile catches up with the last change, and the repair worker with the profile.
  REQUIRE(wait_until([&] {
    json p = status_json(g.name).value("profile", json::object());
    return !p.value("collecting", true) && inline_ready(g.name);
  }, 180s));
  std::uint64_t after = status_json(g.name).value("profile", json::object()).value("number", std::uint64_t{0});
  INFO("profiles " << before << " -> " << after << ", " << answers << " status answers during the storm");
  CHECK(after > before);
  CHECK(after <= before + 51);  // never more than one per change: changes that come faster are coalesced
  REQUIRE(run_cli({"unquarantine", g.name, "--all"}).status == 0);
  auto injected = run_cli({"inject", g.name, "null-deref", "--wait", "--json"}, 200s);
  INFO(injected.out << injected.err);
  CHECK(injected.status == 0);
}

TEST_CASE("repair: after a module change the running repair VM loads the new profile in place, and analyses the "
          "next crashes with it (code restored from the new healthy copy); the pages its kernel has free are given back "
          "to the host each time it is ready",
          "[integration][repair]") {
  std::string name = unique_name("reload");
  // The guest's own distribution kernel in the repair VM (the default is the small one built for
  // it, recovery_test.cc): one that describes its own page classes.
  auto run = run_cli({"run", "--name", name, "--detach", "--verify-window", "1", "--repair-vm-kernel", guest_dir() + "/vmlinuz"});
  INFO(run.err);
  REQUIRE(run.status == 0);
  auto vm = [&] { return status_json(name).value("repair", json::object()).value("vm", json::object()); };
  REQUIRE(wait_until([&] { return vm().value("state", "") == "ready"; }, 120s));
  // Booting freed pages it had touched (the initramfs it unpacked, the agent's scratch): read
  // from its own struct page array and punched out of its RAM file (repair/repair_vm_trim.h).
  REQUIRE(wait_until([&] { return vm().contains("free_pages_given_back"); }, 60s));
  json trim = vm()["free_pages_given_back"];
  INFO(trim.dump());
  CHECK(trim.value("given_back_bytes", std::uint64_t{0}) >= (1u << 20));
  CHECK(trim.value("free_bytes", std::uint64_t{0}) + trim.value("zero_bytes", std::uint64_t{0}) >=
        trim.value("given_back_bytes", std::uint64_t{0}));
  // What it keeps, by its kernel's own account: the kernel, the agent's memory, the initramfs.
  json held = trim.value("class_bytes", json::object());
  CHECK(held.value("kernel", std::uint64_t{0}) >= (8u << 20));
  CHECK(held.value("user", std::uint64_t{0}) >= (1u << 20));  // the agent's parsed profile
  CHECK(held.value("cache", std::uint64_t{0}) >= (1u << 20));  // the agent's binary
  int pid = vm().value("pid", 0);
  std::uint64_t profile = status_json(name).value("profile", json::object()).value("number", std::uint64_t{0});
  REQUIRE(run_cli({"exec", name, "--", "rmmod", "lkdtm"}).status == 0);
  // A new profile, its payload written into the window's other slot, and the same QEMU ready
  // again with it: loaded, not booted.
  REQUIRE(wait_until([&] {
    json s = status_json(name);
    return s.value("profile", json::object()).value("number", std::uint64_t{0}) > profile && !events_of(name, "repair-image").empty() &&
           events_of(name, "repair-image").back().contains("reload") && vm().value("state", "") == "ready";
  }, 120s));
  CHECK(vm().value("pid", 0) == pid);
  auto readies = events_of(name, "repair-ready");
  REQUIRE(readies.size() >= 2);
  CHECK(readies.back().value("mode", "") == "vm");
  INFO("ready again " << readies.back().value("start_ms", 0.0) << " ms after the reload was asked for");
  // The module it no longer has: the profile's symbols say so.
  CHECK_THAT(readies.back().value("agent", ""), !Catch::Contains("healthy copy 0 KiB"));
  CHECK_THAT(readies.back().value("agent", ""), Catch::Contains("symbols (shared), types (shared), unwind tables (shared)"));  // the windows stay
  // Loaded from a snapshot of the guest taken for the reload (the VM has no window onto its RAM).
  CHECK_THAT(readies.back().value("agent", ""), Catch::Contains("from a snapshot"));
  CHECK(vm().value("load", json::object()).value("read", "") == "a snapshot of the guest");
  // The new payload leaves the same parts to the windows the running VM has.
  CHECK(status_json(name).value("repair", json::object()).value("image", json::object()).value("kernel_parts_from_host", json::array()).size() == 3);
  // Given back again after the reload (or skipped, if the VM ran meanwhile), then the crash is
  // analysed by that VM: the pages punched were free for its kernel.
  REQUIRE(wait_until([&] { return vm().value("free_pages_given_back", json::object()).value("times", 0) >= 2; }, 60s));
  INFO("after the reload: " << vm()["free_pages_given_back"].dump());
  CHECK_FALSE(vm()["free_pages_given_back"].contains("error"));
  // Corrupted code is put back from the healthy copy, which the supervisor checks the restore
  // against where the new payload holds it (the old slot's pages were given back: a copy still
  // read there would be zeros, and the restore refused).
  for (const char* cls : {"text-corruption", "null-deref"}) {
    INFO("class " << cls);
    REQUIRE(run_cli({"unquarantine", name, "--all"}).status == 0);
    auto injected = run_cli({"inject", name, cls, "--wait", "--json"}, 120s);
    INFO(injected.out << injected.err);
    REQUIRE(injected.status == 0);
    auto crash = events_of(name, "crash");
    REQUIRE(!crash.empty());
    CHECK(crash.back()["repair"].value("mode", "") == "vm");
    if (std::string(cls) == "text-corruption")
      CHECK(events_of(name, "plan").back()["plan"]["actions"][0].value("action", "") == "restore-code");
  }
  CHECK(recovered(name) == 2);
  CHECK(run_cli({"stop", name}).status == 0);
}

TEST_CASE("repair: a guest that floods the agent channel gets its share; the supervisor answers, and the agent "
          "comes back", "[integration][repair]") {
  auto& g = inline_guest();
  std::string boot = status_json(g.name).value("boot_id", "");
  // Guest root takes the agent's port (the agent is kept from respawning) and writes zeros into
  // it as fast as it can for 15 s: no frame, nothing but resynchronisation for the host.
  REQUIRE(run_cli({"exec", g.name, "--", "sh", "-c",
                   "(for d in /sys/class/virtio-ports/*; do [ \"$(cat $d/name)\" = org.immortal.agent.0 ] && port=/dev/${d##*/}; done; "
                   "mv /sbin/immortal-agent /sbin/immortal-agent.off; sleep 0.5; kill $(pidof immortal-agent); sleep 0.5; "
                   "timeout 15 cat /dev/zero > $port; mv /sbin/immortal-agent.off /sbin/immortal-agent) "
                   "</dev/null >/dev/null 2>&1 &"})
              .status == 0);
  SupervisorProbe probe(g.name);
  // The flood is on when the agent stops answering.
  CHECK(wait_until([&] { return !status_json(g.name).value("agent", json::object()).value("connected", true) ||
                                run_cli({"exec", g.name, "--", "true"}, 5s).status != 0; }, 30s));
  std::this_thread::sleep_for(12s);  // the flood's own length: what is measured is the supervisor under it
  check_supervisor_held_up(probe.stop());
  // The flood ends, init starts the agent again, and it talks to the same supervisor: no reboot.
  CHECK(wait_until([&] { return run_cli({"exec", g.name, "--", "true"}, 10s).status == 0; }, 90s));
  json s = status_json(g.name);
  CHECK(s.value("boot_id", "") == boot);
  CHECK(s.value("state", "") == "running");
  // The garbage was reported, not written to the log at the rate it came.
  std::string log = read_file(test_runtime_root() + "/" + g.name + "/supervisor.log");
  std::size_t broke = 0;
  for (std::size_t at = 0; (at = log.find("broke the protocol", at)) != std::string::npos; ++at) ++broke;
  INFO(log.substr(log.size() > 4000 ? log.size() - 4000 : 0));
  CHECK(broke >= 1);
  CHECK(broke <= 4);
}

TEST_CASE("repair: guest root forges the kernel's BTF (a self-embedding struct): the supervisor answers, stops "
          "trusting the kernel, and the next crash reboots the guest with a bundle", "[integration][repair]") {
  auto& g = inline_guest();
  std::string boot = status_json(g.name).value("boot_id", "");
  // The guest is shared: earlier tests may have quarantined the fault driver's functions, and
  // a quarantined function does not crash.
  REQUIRE(run_cli({"unquarantine", g.name, "--all"}).status == 0);
  // Events are told apart by time (events_of sees the recent ones only).
  auto last_time = [&](const char* kind) {
    json e = events_of(g.name, kind);
    return e.empty() ? std::string() : e.back().value("time", std::string());
  };
  std::string arm_failed_before = last_time("arm-failed"), bundle_before = last_time("bundle");
  // Whatever happens below, the shared guest does not keep the forgery: unless it rebooted,
  // the bind mount goes away.
  struct Unforge {
    const std::string& name;
    const std::string& boot;
    ~Unforge() {
      if (status_json(name).value("boot_id", "") == boot)
        run_cli({"exec", name, "--", "sh", "-c", "umount /sys/kernel/btf/vmlinux; rm -f /tmp/forged.*"});
    }
  } unforge{g.name, boot};
  // The forgery goes in by pieces (an agent command's argument is at most 4096 bytes), then over
  // /sys/kernel/btf/vmlinux; a module reload makes the supervisor collect a new profile with it.
  std::string b64 = forged_btf_base64();
  REQUIRE(run_cli({"exec", g.name, "--", "rm", "-f", "/tmp/forged.b64"}).status == 0);
  for (std::size_t at = 0; at < b64.size(); at += 3000)
    REQUIRE(run_cli({"exec", g.name, "--", "sh", "-c", "printf %s '" + b64.substr(at, 3000) + "' >> /tmp/forged.b64"}).status == 0);
  SupervisorProbe probe(g.name);
  auto forged = run_cli({"exec", g.name, "--", "sh", "-c",
                         "base64 -d /tmp/forged.b64 > /tmp/forged.btf && mount --bind /tmp/forged.btf /sys/kernel/btf/vmlinux && "
                         "rmmod lkdtm && insmod /lib/modules/lkdtm.ko"});
  INFO(forged.out << forged.err);
  REQUIRE(forged.status == 0);
  // The forged profile arrives and is judged: a kernel whose types are malformed or say nothing
  // it needs is not armed.
  bool judged = wait_until([&] { return last_time("arm-failed") > arm_failed_before; }, 180s);
  INFO(status_json(g.name).dump(1).substr(0, 3000));
  REQUIRE(judged);
  std::string why = events_of(g.name, "arm-failed").back().value("error", "");
  INFO(why);
  CHECK((why.find("not fully understood") != std::string::npos || why.find("BTF") != std::string::npos));
  // A crash now cannot be proven safe to resume: the guest is rebooted, with its bundle.
  auto injected = run_cli({"inject", g.name, "null-deref", "--wait", "--json"}, 200s);
  INFO(injected.out << injected.err);
  CHECK(injected.status == 7);  // rebooted
  REQUIRE(wait_until([&] { json s = status_json(g.name); return s.value("state", "") == "running" && s.value("boot_id", boot) != boot; }, 150s));
  // Measured over the whole episode: the forged profile, its judgement, the crash and the reboot.
  check_supervisor_held_up(probe.stop());
  REQUIRE(wait_until([&] { return last_time("bundle") > bundle_before; }, 60s));
  auto diag = run_cli({"diag", events_of(g.name, "bundle").back().value("path", "")}, 60s);
  INFO(diag.err);
  CHECK(diag.status == 0);
  CHECK_THAT(diag.out, Catch::Contains("outcome: rebooted"));
  // The new boot has the real BTF again: armed, and the inline engine ready.
  CHECK(wait_until([&] { return inline_ready(g.name) && status_json(g.name).value("recovery_state", json::object()).value("armed", false); }, 120s));
}

TEST_CASE("repair: a hostile guest (cyclic task list, wild module pointers, absurd lengths, a giant printk ring, a page-table loop) is rebooted with a bundle, "
          "in bounded time", "[integration][repair]") {
  auto& g = inline_guest();
  std::string boot = status_json(g.name).value("boot_id", "");
  // (events_of sees the recent events only: a newer image is told by its time, not by a count.)
  auto last_image = [&] {
    json images = events_of(g.name, "repair-image");
    return images.empty() ? std::string() : images.back().value("time", std::string());
  };
  std::string image_before = last_image();
  SupervisorProbe probe(g.name);
  REQUIRE(run_cli({"exec", g.name, "--", "insmod", "/lib/modules/immortal_hostile.ko"}).status == 0);
  // The new module changes the profile: the repair image is rebuilt with it.
  REQUIRE(wait_until([&] { return last_image() != image_before && inline_ready(g.name); }, 60s));
  // First text that would drive the operator's terminal: a task's comm and a log line carrying
  // escape sequences. The host shows them escaped, never as they are.
  REQUIRE(run_cli({"exec", g.name, "--", "sh", "-c",
                   "(echo escapes > /dev/immortal-hostile; while :; do sleep 1; done) </dev/null >/dev/null 2>&1 &"})
              .status == 0);
  std::string ps, dmesg;
  CHECK(wait_until([&] {
    ps = run_cli({"ps", g.name}).out;
    return ps.find("\\x1b]0;pwn\\x07\\x1b[2J") != std::string::npos;
  }, 30s));
  CHECK(ps.find('\x1b') == std::string::npos);
  dmesg = run_cli({"dmesg", g.name}).out;
  CHECK_THAT(dmesg, Catch::Contains("immortal_hostile: \\x1b[31mred\\x1b[0m \\x1b]0;owned\\x07 escapes"));
  CHECK(dmesg.find('\x1b') == std::string::npos);
  auto last_crash = [&] {
    json crashes = events_of(g.name, "crash");
    return crashes.empty() ? std::uint64_t{0} : crashes.back().value("crash", std::uint64_t{0});
  };
  std::uint64_t crash_before = last_crash();
  REQUIRE(run_cli({"exec", g.name, "--", "sh", "-c",
                   "(sleep 0.3; echo all > /dev/immortal-hostile) </dev/null >/dev/null 2>&1 &"}).status == 0);
  // The supervisor answers throughout (status_json has its own 20 s limit), and reboots the guest.
  bool rebooted = wait_until([&] {
    json s = status_json(g.name);
    return s.value("state", "") == "running" && s.value("boot_id", boot) != boot;
  }, 150s);
  REQUIRE(rebooted);
  check_supervisor_held_up(probe.stop());
  REQUIRE(last_crash() > crash_before);
  json crash = events_of(g.name, "crash").back();
  INFO(crash.dump(1).substr(0, 4000));
  std::string unsafe = crash["analysis"]["unsafe"].dump();
  CHECK_THAT(unsafe, Catch::Contains("kernel structures are corrupted"));
  CHECK_THAT(unsafe, Catch::Contains("task list") && Catch::Contains("module"));
  // Scenario "all" also forges the printk ring's size and loops the module list through the
  // page tables (Debian's kernel has the kprobes the module finds them with).
  CHECK_THAT(unsafe, Catch::Contains("printk ring's geometry"));
  json plan = events_of(g.name, "plan").back()["plan"];
  CHECK(plan.value("resume", true) == false);
  // Bounded: the engine answered well within its time limit.
  CHECK(crash["repair"].value("round_trip_ms", 1e9) < 5000);
  // …and the crash's bundle was written.
  REQUIRE(wait_until([&] { return !events_of(g.name, "bundle").empty(); }, 60s));
  auto diag = run_cli({"diag", events_of(g.name, "bundle").back().value("path", "")}, 60s);
  INFO(diag.err);
  CHECK(diag.status == 0);
  CHECK_THAT(diag.out, Catch::Contains("immortal_hostile"));
  CHECK(run_cli({"stop", g.name, "--force"}).status == 0);
}
