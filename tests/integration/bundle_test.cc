// Diagnosis bundles, end to end: a crash (recovered, or frozen with recovery off) leaves a
// complete bundle; `immortal bundle` takes one on demand; a writer killed mid-write leaves only
// a .partial that readers refuse; retention keeps the newest; damaged bundles are refused with
// a message. The judges of the vmcore are Debian's `crash` and drgn with the debug vmlinux.
// One shared guest (recovery on, --bundle-keep 2) serves every test but the recovery-off one;
// the test that kills its supervisor comes last among its users.
#include "instance_json.h"

#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>

#include <signal.h>
#include <sys/wait.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <optional>
#include <random>
#include <set>
#include <sstream>
#include <thread>

using namespace immortal::test;
using namespace std::chrono_literals;
using nlohmann::json;
namespace fs = std::filesystem;

namespace {

json read_json(const std::string& path) { return json::parse(read_file(path), nullptr, false); }

std::string trimmed(std::string s) {
  while (!s.empty() && (s.back() == '\n' || s.back() == ' ')) s.pop_back();
  return s;
}

// The "bundle" event of crash N in the supervisor's event log, if it is there yet.
std::optional<json> bundle_event(const std::string& rundir, std::uint64_t crash) {
  std::istringstream in(read_file(rundir + "/events.jsonl"));
  for (std::string line; std::getline(in, line);) {
    json e = json::parse(line, nullptr, false);
    if (e.is_object() && e.value("event", "") == "bundle" && e.value("crash", std::uint64_t{0}) == crash) return e;
  }
  return std::nullopt;
}

std::vector<std::string> entries_of(const std::string& dir) {
  std::vector<std::string> names;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(dir, ec)) names.push_back(e.path().filename().string());
  std::sort(names.begin(), names.end());
  return names;
}

bool is_partial(const std::string& entry) { return entry.size() > 9 && entry[0] == '.' && entry.ends_with(".partial"); }

std::set<std::string> manifest_files(const json& manifest) {
  std::set<std::string> names;
  for (const auto& f : manifest.value("files", json::array()))
    if (f.is_object()) names.insert(f.value("name", ""));
  return names;
}

const char* debug_vmlinux() {
  const char* vmlinux = std::getenv("IMMORTAL_DEBUG_VMLINUX");
  INFO("scripts/test sets IMMORTAL_DEBUG_VMLINUX to Debian's debug vmlinux of the guest kernel");
  REQUIRE(vmlinux != nullptr);
  return vmlinux;
}

// Debian's crash with the debug vmlinux, fed COMMANDS (one per line).
std::string crash_judge(const std::string& vmcore, const std::string& commands) {
  std::string file = scratch_dir() + "/" + unique_name("crash-commands");
  std::ofstream(file) << commands << "quit\n";
  return run_shell(std::string("crash -s '") + debug_vmlinux() + "' '" + vmcore + "' < '" + file + "' 2>&1");
}

struct BundleGuest {
  std::string name, rundir, bundle_dir;
  int victim = -1;
  std::string crash_bundle;  // written by the supervisor for crash 1
  std::string pristine;      // a copy of it in scratch_dir(), kept whatever retention does
  bool supervisor_killed = false;
};

// A guest (recovery on, at most 2 bundles kept) that crashed once in the fault driver
// (null-deref), was recovered, and wrote that crash's bundle.
BundleGuest& bundle_guest() {
  static BundleGuest g;
  if (!g.name.empty()) {
    INFO("the shared bundle guest failed to come up in an earlier test");
    REQUIRE(!g.pristine.empty());
    return g;
  }
  g.name = unique_name("bundled");
  g.rundir = test_runtime_root() + "/" + g.name;
  g.bundle_dir = scratch_dir() + "/bundles/" + g.name;
  auto run = run_cli({"run", "--name", g.name, "--detach", "--bundle-keep", "2"});
  INFO(run.err);
  REQUIRE(run.status == 0);
  REQUIRE(wait_until([&] { return status_json(g.name).value("recovery_state", json::object()).value("armed", false); }, 60s));
  g.victim = inject(g.name, "null-deref");
  std::optional<json> event;
  bool written = wait_until([&] { return (event = bundle_event(g.rundir, 1)).has_value(); }, 90s);
  INFO("event log:\n" << read_file(g.rundir + "/events.jsonl"));
  REQUIRE(written);
  g.crash_bundle = event->value("path", "");
  REQUIRE(fs::is_directory(g.crash_bundle));
  std::string copy = scratch_dir() + "/" + g.name + "-crash1-copy";
  REQUIRE(std::system(("cp -a '" + g.crash_bundle + "' '" + copy + "'").c_str()) == 0);
  g.pristine = copy;
  return g;
}

}  // namespace

TEST_CASE("bundles: a recovered null-deref leaves a complete bundle that diag reads", "[integration][bundles]") {
  auto& g = bundle_guest();
  INFO("bundle " << g.crash_bundle);
  // Complete: renamed from its .partial, manifest last, every part listed.
  CHECK(fs::path(g.crash_bundle).parent_path() == fs::path(g.bundle_dir));
  CHECK_THAT(fs::path(g.crash_bundle).filename().string(), Catch::StartsWith(g.name + "-") && Catch::EndsWith("-crash1"));
  for (const auto& e : entries_of(g.bundle_dir)) CHECK_FALSE(is_partial(e));
  json manifest = read_json(g.crash_bundle + "/manifest.json");
  REQUIRE(manifest.is_object());
  CHECK(manifest.value("reason", "") == "crash");
  CHECK(manifest.value("crash", 0) == 1);
  auto files = manifest_files(manifest);
  for (const char* part : {"vmcore", "report.json", "report.txt", "dmesg.txt", "events.jsonl", "profile/profile.json"}) {
    INFO("part " << part);
    CHECK(files.count(part) == 1);
    CHECK(fs::is_regular_file(g.crash_bundle + "/" + part));
  }

  json report = read_json(g.crash_bundle + "/report.json");
  REQUIRE(report.is_object());
  INFO("report.json crash: " << report.value("crash", json()).dump(2) << "\nrecovery: " << report.value("recovery", json()).dump(2));
  CHECK(report["crash"].value("kind", "") == "oops");
  CHECK_THAT(report["crash"].value("function", ""), Catch::Contains("immortal_fault_null_deref"));
  CHECK(report["crash"]["task"].value("pid", -1) == g.victim);
  CHECK(report["recovery"].value("outcome", "") == "recovered");
  CHECK_THAT(read_file(g.crash_bundle + "/dmesg.txt"), Catch::Contains("BUG: kernel NULL pointer dereference"));
  // Filtered by the sandboxed page-class agent's reading of struct page: free pages left out.
  const json& memory = report["memory"];
  INFO("memory: " << memory.dump());
  CHECK_THAT(memory.value("filter", ""), Catch::Contains("page-class agent"));
  CHECK(memory["pages"].value("free", std::uint64_t{0}) > 0);
  CHECK(memory.value("copied_bytes", std::uint64_t{0}) < memory.value("ram_bytes", std::uint64_t{0}) / 2);
  // The kernel's code the precheck found unchanged came from the healthy copy, none after the resume.
  CHECK(memory.value("from_healthy_copy_pages", std::uint64_t{0}) > 1000);
  CHECK(memory.value("taken_after_resume_pages", std::uint64_t{1}) == 0);
  CHECK_FALSE(memory.contains("lost_pages"));  // the arena grew for them after the resume

  auto diag = run_cli({"diag", g.crash_bundle}, 120s);
  INFO("diag: " << diag.err);
  REQUIRE(diag.status == 0);
  for (const char* label : {"What:", "Where:", "Task:", "Recovery:"}) CHECK_THAT(diag.out, Catch::Contains(label));
  CHECK_THAT(diag.out, Catch::Contains("immortal_fault_null_deref"));
  CHECK_THAT(diag.out, Catch::Contains("pid " + std::to_string(g.victim)));
  CHECK_THAT(diag.out, Catch::Contains("recovered"));
}

TEST_CASE("bundles: crash reads a bundle's vmcore: the victim's backtrace and the oops in the log",
          "[integration][bundles][judges]") {
  debug_vmlinux();
  auto& g = bundle_guest();
  json report = read_json(g.crash_bundle + "/report.json");
  std::string oops = report["crash"].value("oops", "");
  REQUIRE_THAT(oops, Catch::StartsWith("BUG: kernel NULL pointer dereference"));
  std::string judged = crash_judge(g.crash_bundle + "/vmcore", "bt " + std::to_string(g.victim) + "\nlog\n");
  INFO("crash said:\n" << judged.substr(0, 6000));
  CHECK_THAT(judged, Catch::Contains("PID: " + std::to_string(g.victim) + " "));
  CHECK_THAT(judged, Catch::Contains("[exception RIP: immortal_fault_null_deref+"));
  CHECK_THAT(judged, Catch::Contains(oops));  // our report's oops line is the kernel's, as crash reads it
}

TEST_CASE("bundles: drgn reads a bundle's vmcore: the crashed thread is the victim, the task list walks",
          "[integration][bundles][judges]") {
  const char* vmlinux = debug_vmlinux();
  auto& g = bundle_guest();
  json report = read_json(g.crash_bundle + "/report.json");
  std::string script = scratch_dir() + "/" + unique_name("drgn") + ".py";
  std::ofstream(script) << R"(import json, sys
import drgn
from drgn.helpers.linux.pid import for_each_task
prog = drgn.Program()
prog.set_core_dump(sys.argv[1])
prog.load_debug_info([sys.argv[2]])
out = {"tasks": {}}
try:
    out["crashed_tid"] = prog.crashed_thread().tid
except Exception as e:
    out["crashed_error"] = str(e)
for t in for_each_task(prog):
    out["tasks"][str(int(t.pid))] = t.comm.string_().decode(errors="replace")
out["init_task"] = prog["init_task"].comm.string_().decode()
# What drgn's crashed_thread() goes by: 0.0.22 reads x86's crashing_cpu (set by kdump), newer ones panic_cpu.
for var in ("crashing_cpu", "panic_cpu"):
    try:
        v = prog[var]
        out[var] = int(v.counter if var == "panic_cpu" else v)
    except Exception as e:
        out[var] = str(e)
print(json.dumps(out))
)";
  // Debian's python3-drgn is for the system python, not a pyenv one that may come first in PATH.
  std::string said = run_shell("/usr/bin/python3 '" + script + "' '" + g.crash_bundle + "/vmcore' '" + vmlinux + "' 2>&1");
  INFO("drgn said:\n" << said.substr(0, 4000));
  auto nl = said.rfind('\n', said.size() >= 2 ? said.size() - 2 : 0);
  json out = json::parse(nl == std::string::npos ? said : said.substr(nl + 1), nullptr, false);
  REQUIRE(out.is_object());
  INFO("the crash was on CPU " << report["crash"].value("cpu", -1) << "; in the vmcore crashing_cpu = "
                                << out.value("crashing_cpu", json()).dump() << ", panic_cpu = " << out.value("panic_cpu", json()).dump());
  CHECK(out.value("crashed_tid", -1) == g.victim);
  CHECK(out.value("init_task", "") == "swapper/0");
  CHECK(out["tasks"].size() > 20);
  CHECK(out["tasks"].value("1", "") == "init");
  CHECK(out["tasks"].value(std::to_string(g.victim), "") == report["crash"]["task"].value("comm", "?"));
}

TEST_CASE("bundles: immortal bundle takes an on-demand bundle of a running guest", "[integration][bundles]") {
  auto& g = bundle_guest();
  auto r = run_cli({"bundle", g.name}, 120s);
  INFO("bundle: " << r.err);
  REQUIRE(r.status == 0);
  std::string path = trimmed(r.out);
  INFO("path " << path);
  REQUIRE(fs::is_directory(path));
  CHECK_THAT(path, Catch::EndsWith("-on-demand"));
  json manifest = read_json(path + "/manifest.json");
  CHECK(manifest.value("reason", "") == "on-demand");
  CHECK(manifest_files(manifest).count("vmcore") == 1);
  // The kernel's code is read after the pause (bundle-format.md), and said so.
  json memory = read_json(path + "/report.json").value("memory", json::object());
  INFO("memory: " << memory.dump());
  CHECK(memory.value("taken_after_resume_pages", std::uint64_t{0}) > 1000);
  CHECK(memory.value("from_healthy_copy_pages", std::uint64_t{1}) == 0);
  CHECK_FALSE(memory.contains("lost_pages"));
  auto diag = run_cli({"diag", path}, 120s);
  INFO("diag: " << diag.err);
  CHECK(diag.status == 0);
  CHECK(status_json(g.name).value("state", "") == "running");
}

TEST_CASE("bundles: drgn reads the same kernel code in an on-demand bundle (taken after its pause) as in a crash's",
          "[integration][bundles][judges]") {
  const char* vmlinux = debug_vmlinux();
  auto& g = bundle_guest();
  auto r = run_cli({"bundle", g.name}, 120s);
  INFO("bundle: " << r.err);
  REQUIRE(r.status == 0);
  std::string on_demand = trimmed(r.out);
  std::string script = scratch_dir() + "/" + unique_name("drgn-code") + ".py";
  // Code of the core kernel (memcpy, in .text) and of its read-only data (linux_banner).
  std::ofstream(script) << R"(import sys
import drgn
prog = drgn.Program()
prog.set_core_dump(sys.argv[1])
prog.load_debug_info([sys.argv[2]])
for name in ("memcpy", "linux_banner"):
    print(name, prog.read(prog.symbol(name).address, 256).hex())
)";
  auto code_of = [&](const std::string& bundle) {
    return run_shell("/usr/bin/python3 '" + script + "' '" + bundle + "/vmcore' '" + vmlinux + "' 2>&1");
  };
  std::string later = code_of(on_demand), crashed = code_of(g.pristine);  // retention may have removed the original
  INFO("on-demand:\n" << later.substr(0, 2000) << "\ncrash's:\n" << crashed.substr(0, 2000));
  REQUIRE_THAT(later, Catch::StartsWith("memcpy "));
  CHECK_THAT(later, !Catch::Contains(std::string(512, '0')));  // not a page left empty
  CHECK(later == crashed);
}

TEST_CASE("bundles: two bundles written at the same time are both completed", "[integration][bundles]") {
  auto& g = bundle_guest();
  REQUIRE_FALSE(g.supervisor_killed);
  // The first is being written (its .partial exists) when the second is asked for, as when a
  // crash comes while an on-demand bundle is written. The overlap of the two writers depends on
  // timing (the second snapshot takes ~0.3 s, the first write ~0.6 s): a pass proves less than a
  // failure does.
  std::string first_out = scratch_dir() + "/" + unique_name("bundle-out");
  pid_t first = spawn_immortal({"bundle", g.name}, first_out);
  bool writing = false;
  for (auto deadline = std::chrono::steady_clock::now() + 30s; !writing && std::chrono::steady_clock::now() < deadline;) {
    auto names = entries_of(g.bundle_dir);
    writing = std::any_of(names.begin(), names.end(), is_partial);
    if (!writing) std::this_thread::sleep_for(2ms);
  }
  auto second = run_cli({"bundle", g.name}, 120s);
  int st = 0;
  REQUIRE(::waitpid(first, &st, 0) == first);
  std::string first_said = read_file(first_out);
  INFO("first: " << first_said << "\nsecond: " << second.out << second.err);
  CHECK(writing);
  CHECK(WIFEXITED(st));
  CHECK(WEXITSTATUS(st) == 0);
  CHECK(second.status == 0);
  std::set<std::string> written;
  for (const auto& said : {first_said, second.out}) {
    std::istringstream in(said);
    for (std::string line; std::getline(in, line);)
      if (line.rfind(g.bundle_dir + "/", 0) == 0) written.insert(line);
  }
  CHECK(written.size() == 2);
  for (const auto& path : written) {
    INFO("bundle " << path);
    CHECK(fs::is_regular_file(path + "/manifest.json"));
  }
}

TEST_CASE("bundles: --bundle-keep 2 keeps the newest two bundles", "[integration][bundles]") {
  auto& g = bundle_guest();
  REQUIRE_FALSE(g.supervisor_killed);
  std::vector<std::string> taken;
  for (int i = 0; i < 4; ++i) {
    auto r = run_cli({"bundle", g.name}, 120s);
    INFO("bundle " << i + 1 << ": " << r.err);
    REQUIRE(r.status == 0);
    taken.push_back(fs::path(trimmed(r.out)).filename().string());
  }
  std::vector<std::string> kept;
  for (const auto& e : entries_of(g.bundle_dir))
    if (e[0] != '.') kept.push_back(e);
  INFO("taken: " << json(taken).dump() << "\nkept: " << json(kept).dump());
  CHECK(std::is_sorted(taken.begin(), taken.end()));  // names sort by time
  REQUIRE(kept.size() == 2);
  CHECK(kept[0] == taken[2]);
  CHECK(kept[1] == taken[3]);
}

TEST_CASE("bundles: a supervisor killed while writing a bundle leaves only a .partial that diag refuses",
          "[integration][bundles]") {
  auto& g = bundle_guest();
  REQUIRE_FALSE(g.supervisor_killed);
  pid_t supervisor = status_json(g.name).value("supervisor_pid", -1);
  REQUIRE(supervisor > 0);
  std::string partial;
  int cli_status = -1;
  for (int attempt = 0; attempt < 5 && partial.empty(); ++attempt) {
    pid_t cli = spawn_immortal({"bundle", g.name}, scratch_dir() + "/" + unique_name("bundle-out"));
    auto deadline = std::chrono::steady_clock::now() + 60s;
    bool cli_ended = false;
    while (std::chrono::steady_clock::now() < deadline) {
      for (const auto& e : entries_of(g.bundle_dir))
        if (is_partial(e)) partial = e;
      if (!partial.empty()) {
        REQUIRE(::kill(supervisor, SIGKILL) == 0);
        g.supervisor_killed = true;
        break;
      }
      int st = 0;
      if (::waitpid(cli, &st, WNOHANG) == cli) {
        cli_ended = true;  // written before we saw it: try again
        break;
      }
      std::this_thread::sleep_for(2ms);
    }
    if (cli_ended) continue;
    // The client of a supervisor that died must end with an error, not wait or claim success.
    int st = 0;
    bool ended = wait_until([&] { return ::waitpid(cli, &st, WNOHANG) == cli; }, 30s);
    if (!ended) {
      ::kill(cli, SIGKILL);
      ::waitpid(cli, &st, 0);
    }
    CHECK(ended);
    cli_status = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
  }
  INFO("bundle dir: " << json(entries_of(g.bundle_dir)).dump());
  REQUIRE(!partial.empty());
  CHECK(cli_status != 0);
  CHECK(cli_status < 128);
  CHECK(wait_until([&] { return !process_alive(supervisor); }, 10s));
  // The guest outlives its killed supervisor (a later one could attach); this test is done with it.
  for (pid_t vm : qemu_processes(g.name)) ::kill(vm, SIGKILL);
  CHECK(wait_until([&] { return qemu_processes(g.name).empty(); }, 10s));

  // No half-written bundle under a bundle's name; every complete one verifies.
  int complete = 0;
  for (const auto& e : entries_of(g.bundle_dir)) {
    if (e[0] == '.') continue;
    std::string path = g.bundle_dir + "/" + e;
    INFO("bundle " << e);
    CHECK(fs::is_regular_file(path + "/manifest.json"));
    auto diag = run_cli({"diag", path}, 120s);
    INFO("diag: " << diag.err);
    CHECK(diag.status == 0);
    ++complete;
  }
  CHECK(complete >= 1);
  std::string partial_path = g.bundle_dir + "/" + partial;
  REQUIRE(fs::is_directory(partial_path));  // the commit could not have finished: its writer died
  auto refused = run_cli({"diag", partial_path}, 60s);
  CHECK(refused.status == 3);
  CHECK_THAT(refused.err, Catch::Contains("never completed"));
}

TEST_CASE("bundles: diag refuses damaged bundles with a message and the right status", "[integration][bundles]") {
  auto& g = bundle_guest();
  const std::string base = scratch_dir() + "/" + unique_name("damaged");
  REQUIRE(fs::create_directories(base));
  auto copy = [&](const std::string& what) {
    std::string dir = base + "/" + what;
    REQUIRE(std::system(("cp -a --reflink=auto '" + g.pristine + "' '" + dir + "'").c_str()) == 0);
    return dir;
  };
  auto expect_refused = [&](const std::string& what, const std::string& path, int status) {
    auto r = run_cli({"diag", path}, 120s);
    INFO(what << ": status " << r.status << ", stderr: " << r.err);
    CHECK(r.status == status);
    CHECK(r.status >= 0);
    CHECK(r.status < 128);
    CHECK_FALSE(trimmed(r.err).empty());
  };
  // The pristine copy itself is fine: the damage below is what diag refuses.
  REQUIRE(run_cli({"diag", g.pristine}, 120s).status == 0);

  std::string truncated = copy("truncated-vmcore");
  fs::resize_file(truncated + "/vmcore", fs::file_size(truncated + "/vmcore") / 2);
  expect_refused("truncated vmcore", truncated, 3);

  std::string no_report = copy("no-report");
  fs::remove(no_report + "/report.json");
  expect_refused("report.json removed", no_report, 3);

  std::string altered = copy("altered-report-txt");
  {
    std::fstream f(altered + "/report.txt", std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(0);
    f.put('#');
  }
  expect_refused("a byte of report.txt changed", altered, 3);

  std::string newer = copy("version-99");
  json manifest = read_json(newer + "/manifest.json");
  manifest["version"] = 99;
  std::ofstream(newer + "/manifest.json", std::ios::trunc) << manifest.dump(2);
  expect_refused("manifest version 99", newer, 9);

  std::string escape = copy("escaping-name");
  manifest = read_json(escape + "/manifest.json");
  manifest["files"].push_back({{"name", "../../etc/passwd"}, {"bytes", 1}, {"sha256", std::string(64, '0')}});
  std::ofstream(escape + "/manifest.json", std::ios::trunc) << manifest.dump(2);
  expect_refused("a manifest naming a file outside the bundle", escape, 3);

  std::string garbage = copy("garbage-manifest");
  std::ofstream(garbage + "/manifest.json", std::ios::trunc) << "{\"format\": \"immortal-bundle\", \"version\": 1, \"files\": [\x01\x02";
  expect_refused("garbage manifest", garbage, 3);

  std::string random_archive = base + "/random.tar.zst";
  {
    std::mt19937 rng(20261123);
    std::ofstream out(random_archive, std::ios::binary);
    for (int i = 0; i < 65536; ++i) out.put(static_cast<char>(rng() & 0xff));
  }
  expect_refused("random bytes as a .tar.zst", random_archive, 3);

  std::string empty = base + "/empty";
  REQUIRE(fs::create_directory(empty));
  expect_refused("an empty directory", empty, 3);

  fs::remove_all(base);
}

TEST_CASE("bundles: with recovery off a crash caught by pvpanic leaves a compressed bundle of the frozen guest",
          "[integration][bundles]") {
  debug_vmlinux();
  std::string name = unique_name("frozen");
  std::string rundir = test_runtime_root() + "/" + name;
  auto run = run_cli({"run", "--name", name, "--detach", "--recovery", "off", "--bundle-compress"});
  INFO(run.err);
  REQUIRE(run.status == 0);
  // The bundle's report needs the healthy-guest profile.
  REQUIRE(wait_until([&] { return read_file(rundir + "/supervisor.log").find("guest profile saved") != std::string::npos; }, 60s));
  inject(name, "null-deref");
  std::optional<json> event;
  bool written = wait_until([&] { return (event = bundle_event(rundir, 1)).has_value(); }, 120s);
  INFO("event log:\n" << read_file(rundir + "/events.jsonl"));
  REQUIRE(written);
  std::string archive = event->value("path", "");
  INFO("bundle " << archive);
  REQUIRE_THAT(archive, Catch::EndsWith(".tar.zst"));
  CHECK(fs::is_regular_file(archive));
  std::string bundle_name = fs::path(archive).filename().string();
  bundle_name.resize(bundle_name.size() - std::string(".tar.zst").size());
  CHECK_THAT(bundle_name, Catch::EndsWith("-crash1"));
  // The archive instead of the directory, and nothing half-written beside it.
  for (const auto& e : entries_of(fs::path(archive).parent_path().string())) {
    INFO("entry " << e);
    CHECK(e == bundle_name + ".tar.zst");
  }

  auto diag = run_cli({"diag", archive}, 120s);
  INFO("diag: " << diag.err);
  CHECK(diag.status == 0);
  CHECK_THAT(diag.out, Catch::Contains("immortal_fault_null_deref"));
  CHECK_THAT(diag.out, Catch::Contains("frozen"));

  std::string unpacked = scratch_dir() + "/" + unique_name("unpacked");
  REQUIRE(fs::create_directory(unpacked));
  REQUIRE(std::system(("tar --zstd -xf '" + archive + "' -C '" + unpacked + "'").c_str()) == 0);
  std::string dir = unpacked + "/" + bundle_name;
  json report = read_json(dir + "/report.json");
  REQUIRE(report.is_object());
  INFO("report.json crash: " << report.value("crash", json()).dump(2) << "\nrecovery: " << report.value("recovery", json()).dump(2));
  CHECK(report["recovery"].value("outcome", "") == "frozen");
  CHECK(report["crash"].value("caught_by", "") == "pvpanic");
  CHECK(fs::is_regular_file(dir + "/manifest.json"));

  std::string judged = crash_judge(dir + "/vmcore", "log\n");
  INFO("crash said:\n" << judged.substr(0, 4000));
  CHECK_THAT(judged, Catch::Contains("Kernel panic - not syncing"));
  CHECK(run_cli({"stop", name, "--force"}).status == 0);
  fs::remove_all(unpacked);
}
