// The introspection core against a real guest: what we read from a QEMU dump (and from live
// RAM) must agree with what the guest itself says through /proc and dmesg.
#include "instance_json.h"

#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <fstream>
#include <map>
#include <set>
#include <sstream>

using namespace immortal::test;
using namespace std::chrono_literals;
using nlohmann::json;

TEST_CASE("tasks, modules and the kernel log read from a QEMU dump agree with the guest's own view",
          "[integration][introspection]") {
  std::string name = unique_name("introspect");
  REQUIRE(run_cli({"run", "--name", name, "--detach"}).status == 0);
  REQUIRE(wait_until([&] { return status_json(name)["profile"].contains("taken_at"); }, 60s));

  // A known set of long-lived processes: shell scripts (comm is the script's name), each waiting
  // on one long sleep, so nothing comes and goes between the guest's listing and the dump.
  auto start = run_cli({"exec", name, "--", "sh", "-c",
                        "for n in alpha beta gamma; do printf '#!/bin/sh\\nsleep 100000\\n' > /tmp/worker-$n; "
                        "chmod +x /tmp/worker-$n; /tmp/worker-$n </dev/null >/dev/null 2>&1 & done"});
  REQUIRE(start.status == 0);
  auto view = run_cli({"exec", name, "--", "sh", "-c",
                       "echo $$; for d in /proc/[0-9]*; do echo \"${d#/proc/} $(cat $d/comm 2>/dev/null)\"; done; "
                       "echo ---; cut -d' ' -f1 /proc/modules; echo ---; dmesg"});
  REQUIRE(view.status == 0);
  std::string dump = scratch_dir() + "/" + name + ".core";
  auto dumped = run_cli({"dump", name, dump}, 120s);
  INFO(dumped.err);
  REQUIRE(dumped.status == 0);

  // The guest's view.
  auto parts = lines_of(view.out);
  std::size_t i = 0;
  std::string listing_shell = parts.at(i++);
  std::map<int, std::string> guest_tasks;
  for (; i < parts.size() && parts[i] != "---"; ++i) {
    auto sp = parts[i].find(' ');
    if (parts[i].substr(0, sp) != listing_shell) guest_tasks[std::stoi(parts[i].substr(0, sp))] = parts[i].substr(sp + 1);
  }
  std::set<std::string> guest_modules;
  for (++i; i < parts.size() && parts[i] != "---"; ++i) guest_modules.insert(parts[i]);
  std::vector<std::string> guest_dmesg(parts.begin() + static_cast<long>(std::min(parts.size(), i + 1)), parts.end());

  auto diag = run_cli({"diag", dump, "--profile", test_runtime_root() + "/" + name + "/profile", "--json", "--tasks",
                       "--modules", "--dmesg"},
                      120s);
  INFO(diag.err);
  REQUIRE(diag.status == 0);
  json report = json::parse(diag.out);
  INFO(report.value("incomplete", json::array()).dump());
  CHECK(report["incomplete"].empty());
  CHECK(report["kernel_release"] == status_json(name)["kernel_release"]);

  {  // every process the guest listed is in our task list, with the same comm
    std::map<int, std::string> ours;
    for (const auto& t : report["tasks"]) ours[t["pid"].get<int>()] = t["comm"].get<std::string>();
    CHECK(ours.size() >= guest_tasks.size());
    for (const auto& [pid, comm] : guest_tasks) {
      if (comm.rfind("kworker/", 0) == 0 && !ours.count(pid)) continue;  // short-lived kernel workers
      INFO("pid " << pid << " " << comm);
      REQUIRE(ours.count(pid));
      // /proc shows a workqueue worker's comm with its current work appended ("kworker/1:1-events").
      // A kernel thread's /proc comm is its full name; task_struct.comm keeps 15 characters.
      bool same = ours[pid] == comm || (comm.rfind("kworker/", 0) == 0 && comm.rfind(ours[pid] + "-", 0) == 0) ||
                  (ours[pid].size() == 15 && comm.rfind(ours[pid], 0) == 0);
      CHECK(same);
    }
    int workers = 0;
    for (const auto& [pid, comm] : ours) workers += comm.rfind("worker-", 0) == 0;
    CHECK(workers == 3);
  }

  {  // our module list is the guest's
    std::set<std::string> ours;
    for (const auto& m : report["modules"]) ours.insert(m["name"].get<std::string>());
    CHECK(ours == guest_modules);
    CHECK(ours.count("immortal_fault"));
  }

  {  // every line the guest's dmesg printed is in our kernel log, in order
    std::string rendered = run_cli({"diag", dump, "--profile", test_runtime_root() + "/" + name + "/profile", "--dmesg"}).out;
    auto ours = lines_of(rendered);
    REQUIRE(guest_dmesg.size() > 50);
    std::size_t at = 0;
    for (const auto& line : guest_dmesg) {
      auto found = std::find(ours.begin() + static_cast<long>(at), ours.end(), line);
      INFO(line);
      REQUIRE(found != ours.end());
      at = static_cast<std::size_t>(found - ours.begin());
    }
  }

  {  // the same readers work on live RAM: a process started through the agent shows up
    auto spawned = run_cli({"exec", name, "--", "sh", "-c", "sleep 600 </dev/null >/dev/null 2>&1 & echo $!"});
    REQUIRE(spawned.status == 0);
    int pid = std::stoi(spawned.out);
    INFO("spawned pid " << pid);
    auto ps = run_cli({"ps", name, "--json"});
    INFO(ps.err << ps.out);
    REQUIRE(ps.status == 0);
    bool found = false;
    json live = json::parse(ps.out);  // kept alive: a range-for does not extend a temporary's life
    for (const auto& t : live["tasks"])
      if (t["pid"] == pid) found = t["comm"] == "sleep";
    CHECK(found);
    auto lsmod = run_cli({"lsmod", name});
    CHECK_THAT(lsmod.out, Catch::Contains("immortal_fault"));
  }
  run_cli({"stop", name, "--force"});
}

TEST_CASE("diag refuses what is not a dump, and a profile of another kernel", "[integration][introspection]") {
  std::string garbage = scratch_dir() + "/not-a-core";
  { std::ofstream(garbage) << "definitely not ELF\n"; }
  auto r = run_cli({"diag", garbage, "--profile", "/nonexistent"});
  CHECK(r.status == 3);
  CHECK_THAT(r.err, Catch::Contains("not an ELF"));
  auto missing = run_cli({"diag", "/nonexistent/core", "--profile", "/nonexistent"});
  CHECK(missing.status == 3);
  CHECK_THAT(missing.err, Catch::Contains("cannot open /nonexistent/core"));
  auto self = run_cli({"diag", IMMORTAL_BINARY, "--profile", "/nonexistent"});
  CHECK(self.status == 3);
  CHECK_THAT(self.err, Catch::Contains("not a core dump"));
}
