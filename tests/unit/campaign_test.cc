// Campaign pieces without a guest: the plan's parser and its errors, the expansion into
// injections, the console watch over guest-written text, the records check of a disk image,
// results kept and resumed, and the report's numbers and HTML.
#include "base/error.h"
#include "campaign/campaign_plan.h"
#include "campaign/campaign_report.h"
#include "campaign/campaign_results.h"
#include "campaign/fault_inject_scripts.h"
#include "campaign/guest_files.h"
#include "campaign/workload_records.h"

#include <catch2/catch.hpp>

#include <fcntl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <thread>

using namespace immortal;
using namespace immortal::vmm;
using Catch::Matchers::Contains;

namespace {

std::string temp_dir(const std::string& name) {
  auto dir = std::filesystem::temp_directory_path() / ("immortal-campaign-" + name + "-" + std::to_string(::getpid()));
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  return dir.string();
}

const char* const kPlan = R"(name = "t"
[recovery]
verify_window = 2
[baselines]
panic_on_oops = [1]
per_type = 1
[[faults]]
source = "driver"
types = ["null-deref", "mutex-held"]
count = 3
[[faults]]
source = "lkdtm"
types = ["BUG"]
[[faults]]
source = "driver"
types = ["gpf"]
baselines = false
[[faults]]
source = "fault-inject"
types = ["fail_function"]
functions = ["realdev_open", "kmalloc_x"]
trigger = "cat /dev/x"
)";

// Results as a campaign writes them: a null-deref recovered in 210 ms, and the same fault
// rebooted by the stock kernel.
nlohmann::json recovered_null_deref(const std::string& started_at) {
  return {{"phase", "immortal"}, {"index", 0}, {"outcome", "recovered"}, {"fault", "null-deref"}, {"source", "driver"},
          {"records_lost", 0}, {"workload_back", true}, {"intercept_to_resume_ms", 210.0}, {"workload_gap_ms", 600.0},
          {"started_at", started_at}};
}

nlohmann::json rebooted_null_deref(const std::string& started_at) {
  return {{"phase", "panic_on_oops=1"}, {"index", 0}, {"outcome", "rebooted"}, {"fault", "null-deref"}, {"source", "driver"},
          {"records_lost", 0}, {"workload_back", true}, {"workload_gap_ms", 11000.0}, {"started_at", started_at}};
}

std::string plan_error(const std::string& text) {
  try {
    parse_campaign_plan(text, "p.toml");
  } catch (const Error& e) {
    CHECK(e.exit_code() == static_cast<int>(ExitCode::bad_input));
    return e.what();
  }
  return "(accepted)";
}

}  // namespace

TEST_CASE("campaign plan: read, checked and expanded round by round", "[campaign]") {
  CampaignPlan plan = parse_campaign_plan(kPlan, "p.toml");
  CHECK(plan.name == "t");
  CHECK(plan.verify_window_s == 2);
  CHECK(plan.baselines.panic_on_oops == std::vector<int>{1});
  CHECK(plan.faults[0].probe == "cat /dev/immortal-fault >/dev/null");  // the driver's default probe
  auto all = expand_injections(plan);
  REQUIRE(all.size() == 3 * 2 + 1 + 1 + 2);
  // Round 1 has every type once, in the plan's order; later rounds only the types with counts left.
  CHECK(all[0].fault == "null-deref");
  CHECK(all[1].fault == "mutex-held");
  CHECK(all[2].fault == "lkdtm:BUG");
  CHECK(all[3].fault == "gpf");
  CHECK(all[4].fault == "fail_function:realdev_open");
  CHECK(all[5].fault == "fail_function:kmalloc_x");
  CHECK(all[6].fault == "null-deref");
  CHECK(all[9].fault == "mutex-held");
  for (std::size_t i = 0; i < all.size(); ++i) CHECK(all[i].index == static_cast<int>(i));
  CHECK(expand_injections(plan, 1).size() == 5);  // the baselines: each type once, gpf not
  CHECK_THAT(plan_error("name = \"x\"\n[[faults]]\nsource = \"driver\"\ntypes = [\"bug\"]\nbaselines = 1\n"),
             Contains("true or false"));
  CHECK(campaign_phases(plan).size() == 2);
  CHECK(plan.digest.size() == 64);
}

TEST_CASE("campaign plan: every mistake is named with its line", "[campaign]") {
  CHECK_THAT(plan_error("name = \"x\"\n"), Contains("no [[faults]]"));
  // A libvirt domain as the guest: as libvirt defines it, nothing of our own VM's with it.
  const std::string faults = "[[faults]]\nsource = \"driver\"\ntypes = [\"bug\"]\n";
  CampaignPlan on_libvirt =
      parse_campaign_plan("name = \"x\"\n[guest]\nlibvirt = \"web\"\nconnect = \"qemu+ssh://h/system\"\n" + faults, "p.toml");
  CHECK(on_libvirt.libvirt_domain == "web");
  CHECK(on_libvirt.libvirt_uri == "qemu+ssh://h/system");
  CHECK_THAT(plan_error("name = \"x\"\n[guest]\nlibvirt = \"web\"\nmemory = \"1G\"\n" + faults),
             Contains("p.toml:3") && Contains("no \"memory\" with it"));
  CHECK_THAT(plan_error("name = \"x\"\n[guest]\nlibvirt = \"web\"\ndisk = \"a.img\"\n" + faults), Contains("no \"disk\""));
  CHECK_THAT(plan_error("name = \"x\"\n[guest]\nconnect = \"qemu:///system\"\n" + faults), Contains("\"connect\" is the libvirt URI"));
  CHECK_THAT(plan_error("name = \"a b\"\n[[faults]]\nsource=\"driver\"\ntypes=[\"bug\"]\n"), Contains("\"name\""));
  CHECK_THAT(plan_error("name = \"x\"\n[[faults]]\nsource = \"driver\"\ntypes = [\"nope\"]\n"),
             Contains("p.toml:4: [[faults]] #1: unknown fault class \"nope\""));
  CHECK_THAT(plan_error("name = \"x\"\n[[faults]]\nsource = \"lkdtm\"\ntypes = [\"bug\"]\n"), Contains("bad LKDTM type"));
  CHECK_THAT(plan_error("name = \"x\"\n[[faults]]\nsource = \"driver\"\ntypes = [\"bug\"]\ncount = 0\n"),
             Contains("\"count\" must be between 1"));
  CHECK_THAT(plan_error("name = \"x\"\n[[faults]]\nsource = \"driver\"\ntypes = [\"bug\"]\ncount = \"3\"\n"),
             Contains("must be an integer"));
  CHECK_THAT(plan_error("name = \"x\"\n[[faults]]\nsource = \"driver\"\ntypes = [\"bug\"]\ncuont = 3\n"),
             Contains("p.toml:5: [[faults]] #1: unknown key \"cuont\""));
  CHECK_THAT(plan_error("name = \"x\"\n[[faults]]\nsource = \"module\"\ntypes = [\"m\"]\n"), Contains("\"trigger\""));
  CHECK_THAT(plan_error("name = \"x\"\n[[faults]]\nsource = \"driver\"\ntypes = [\"bug\"]\ntrigger = \"x\"\n"),
             Contains("no \"trigger\""));
  CHECK_THAT(plan_error("name = \"x\"\n[[faults]]\nsource = \"fault-inject\"\ntypes = [\"fail_function\"]\ntrigger = \"x\"\n"),
             Contains("needs \"functions\""));
  CHECK_THAT(plan_error("name = \"x\"\n[[faults]]\nsource = \"fault-inject\"\ntypes = [\"failslab\"]\ntrigger = \"x\"\nfunctions=[\"f\"]\n"),
             Contains("for fail_function only"));
  CHECK_THAT(plan_error("name = \"x\"\n[baselines]\npanic_on_oops = [1, 1]\n[[faults]]\nsource=\"driver\"\ntypes=[\"bug\"]\n"),
             Contains("each panic_on_oops value once"));
  CHECK_THAT(plan_error("name = \"x\"\n[guest]\nmemory = 5\n[[faults]]\nsource=\"driver\"\ntypes=[\"bug\"]\n"),
             Contains("must be a string"));
  CHECK_THAT(plan_error("name = \"x\"\n[[faults]]\nsource = \"driver\"\ntypes = [\"bug\"\n"), Contains("p.toml:"));
  CHECK_THAT(plan_error("name = \"x\"\n[[faults]]\nsource = \"driver\"\ntypes = [\"bug\"]\ncount = 10000\n"
                        "[[faults]]\nsource = \"driver\"\ntypes = [\"bug\", \"gpf\", \"warn\", \"panic\", \"divide\", \"timer\", "
                        "\"workqueue\", \"softlockup\", \"hung-task\", \"null-deref\", \"mutex-held\"]\ncount = 10000\n"),
             Contains("at most"));
  CHECK_THAT(plan_error(std::string(2 << 20, '#')), Contains("at most"));
  CHECK_THAT(plan_error(std::string("name = \"x\0\"\n", 12)), Contains("p.toml"));
}

TEST_CASE("output watch: acknowledgements and kernel reports from what the guest writes", "[campaign]") {
  std::string dir = temp_dir("console");
  std::string log = dir + "/console.log";
  std::ofstream(log) << "boot\nimmortal-record 1\r\nimmortal-record 2\n[  3.1] immortal-record 3 (interleaved)\n";
  GuestOutputWatch w(log);
  w.poll();
  CHECK(w.highest() == 3);
  {
    std::ofstream more(log, std::ios::app);
    more << "immortal-record 2\n"                          // an old number again: nothing
         << "immortal-record 99999999999999999999\n"      // too large: ignored
         << "immortal-record -5\nimmortal-record 0\n"      // not records
         << std::string(100'000, 'x') << "\n"             // a very long line
         << "[  9.0] BUG: kernel NULL pointer dereference, address: 0\n"
         << "immortal-record-failed 4\nimmortal-record 4";  // no newline yet
  }
  w.poll();
  CHECK(w.highest() == 3);
  CHECK(w.kernel_reports() == 1);
  CHECK_THAT(w.last_report(), Contains("NULL pointer"));
  CHECK(w.failed_writes() == 1);
  std::ofstream(log, std::ios::app) << "\n";
  w.poll();
  CHECK(w.highest() == 4);
  // The kernel's log as the workload forwards it from /dev/kmsg: the report without its prefix.
  std::ofstream(log, std::ios::app) << "4,383,3826333,-;Oops: 0002 [#1] PREEMPT SMP NOPTI\n";
  w.poll();
  CHECK(w.kernel_reports() == 2);
  CHECK(w.last_report() == "Oops: 0002 [#1] PREEMPT SMP NOPTI");
  // A log rotated (emptied at a new launch) is read again from its start.
  std::ofstream(log, std::ios::trunc) << "immortal-record 5\n";
  w.poll();
  CHECK(w.highest() == 5);
  GuestOutputWatch missing(dir + "/none.log");
  missing.poll();
  CHECK(missing.highest() == 0);
}

TEST_CASE("output watch: the workload's longest stand-still around a moment", "[campaign]") {
  std::string log = temp_dir("gap") + "/console.log";
  GuestOutputWatch w(log);
  std::ofstream(log) << "immortal-record 1\n";
  w.poll();
  auto since = std::chrono::system_clock::now();
  std::this_thread::sleep_for(std::chrono::milliseconds(120));
  std::ofstream(log, std::ios::app) << "immortal-record 2\n";
  w.poll();
  std::ofstream(log, std::ios::app) << "immortal-record 3\n";
  w.poll();
  auto gap = w.longest_gap_ms(since);
  REQUIRE(gap);
  CHECK(*gap >= 100);
  CHECK(!w.longest_gap_ms(std::chrono::system_clock::now() + std::chrono::hours(1)));
}

TEST_CASE("records check: every acknowledged record intact in its sector", "[campaign]") {
  std::string disk = temp_dir("disk") + "/records.img";
  {
    std::ofstream out(disk, std::ios::binary);
    std::string zero(kRecordBytes, '\0');
    for (std::uint64_t seq = 0; seq <= 10; ++seq) {
      std::string sector = zero;
      std::string text = seq == 0 ? "" : record_text(seq);
      if (seq == 4) text = record_text(5);                // another record's text
      if (seq == 7) text = record_text(7).substr(0, 10);  // torn
      sector.replace(0, text.size(), text);
      if (seq == 9) sector[300] = 'x';                     // noise after the record
      out << sector;
    }
  }
  RecordCheck c = check_records(disk, 1, 12);  // 11 and 12 are past the end
  CHECK(c.checked == 12);
  CHECK(c.lost == 5);
  CHECK(c.examples == std::vector<std::uint64_t>{4, 7, 9, 11, 12});
  CHECK(check_records(disk, 1, 3).lost == 0);
  CHECK(check_records(disk, 0, 0).checked == 0);
  CHECK_THROWS_AS(check_records(disk + ".none", 1, 1), Error);
}

TEST_CASE("campaign results: kept line by line, resumed, another plan refused, torn lines run again", "[campaign]") {
  std::string dir = temp_dir("results");
  CampaignPlan plan = parse_campaign_plan(kPlan, "p.toml");
  {
    CampaignResults r(dir, plan, false);
    r.add(recovered_null_deref("2026-12-03T10:00:00.000Z"));
    r.add(rebooted_null_deref("2026-12-03T10:01:00.000Z"));
  }
  std::ofstream(dir + "/results.jsonl", std::ios::app) << "{\"phase\":\"immortal\",\"index\":1,\"outc";  // torn by a crash
  CampaignResults resumed(dir, plan, false);
  CHECK(resumed.all().size() == 2);
  CHECK(resumed.skipped_lines() == 1);
  CHECK(resumed.done("immortal", 0));
  CHECK(!resumed.done("immortal", 1));
  CampaignPlan other = parse_campaign_plan(std::string(kPlan) + "# changed\n", "p.toml");
  CHECK_THROWS_AS(CampaignResults(dir, other, false), Error);
  CampaignResults restarted(dir, other, true);
  CHECK(restarted.all().empty());
  CHECK(std::filesystem::exists(dir + "/results.jsonl.1"));
  CHECK_THROWS_AS(CampaignResults(dir + "/nothing"), Error);
}

TEST_CASE("campaign report: numbers, charts and HTML from the results, guest text escaped", "[campaign]") {
  std::string dir = temp_dir("report");
  CampaignPlan plan = parse_campaign_plan(kPlan, "p.toml");
  CampaignResults results(dir, plan, false);
  results.add(recovered_null_deref("a"));
  results.add({{"phase", "immortal"}, {"index", 1}, {"outcome", "recovered"}, {"fault", "mutex-held"}, {"source", "driver"},
               {"records_lost", 2}, {"lost_examples", {7, 8}}, {"workload_back", true}, {"started_at", "b"},
               {"reason", "<script>alert(1)</script>"}});
  results.add(rebooted_null_deref("c"));
  CampaignReport report(results);
  CHECK(report.records_lost_in_recoveries() == 2);
  REQUIRE(report.charts().size() == 5);
  for (const auto& c : report.charts()) {
    INFO(c["id"]);
    CHECK(!c["labels"].empty());
    CHECK(!c["datasets"].empty());
    CHECK(!c["table"]["rows"].empty());
  }
  auto table = report.summary_table();
  CHECK_THAT(table, Contains("RECORDS LOST in recovered injections: 2"));
  CHECK_THAT(table, Contains("2 100%"));
  std::string js = dir + "/chart.js";
  std::ofstream(js) << "/* Chart.js stand-in */ window.Chart = function() {}; // </script> inside";
  ::setenv("IMMORTAL_CHARTJS", js.c_str(), 1);
  report.write_html(dir + "/report.html");
  std::ifstream in(dir + "/report.html");
  std::string html((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  CHECK_THAT(html, Contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
  CHECK(html.find("<script>alert(1)") == std::string::npos);
  CHECK(html.find("// </script> inside") == std::string::npos);  // the inlined script cannot end early
  CHECK_THAT(html, Contains("Content-Security-Policy"));
  ::setenv("IMMORTAL_CHARTJS", (dir + "/missing.js").c_str(), 1);
  CHECK_THROWS_AS(report.write_html(dir + "/report2.html"), Error);
  ::unsetenv("IMMORTAL_CHARTJS");
}

namespace {

std::string read_all(const std::string& path) {
  std::ifstream in(path);
  return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

// As the guest's agent runs a command: sh -c SCRIPT sh ARGS…
int run_sh(const GuestShellCommand& command) {
  std::vector<const char*> argv{"sh", "-c", command.script.c_str(), "sh"};
  for (const auto& a : command.args) argv.push_back(a.c_str());
  argv.push_back(nullptr);
  pid_t pid = ::fork();
  if (pid == 0) {
    ::execv("/bin/sh", const_cast<char* const*>(argv.data()));
    ::_exit(127);
  }
  int status = 0;
  ::waitpid(pid, &status, 0);
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

int run_sh(const std::string& script) {
  pid_t pid = ::fork();
  if (pid == 0) {
    ::execl("/bin/sh", "sh", "-c", script.c_str(), static_cast<char*>(nullptr));
    ::_exit(127);
  }
  int status = 0;
  ::waitpid(pid, &status, 0);
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

}  // namespace

// No kernel here has the framework (Debian builds without CONFIG_FAULT_INJECTION): the scripts
// run against a debugfs of plain files laid out as the kernel's, which shows what they write.
TEST_CASE("fault-inject: the framework configured for the trigger's task only, then reset", "[campaign]") {
  std::string dir = temp_dir("fault-inject");
  FaultInjectPaths paths{dir + "/debug", dir + "/proc self"};  // a space: every path is quoted
  std::filesystem::create_directories(paths.proc_self);
  for (const char* kind : {"fail_function", "failslab"}) {
    std::filesystem::create_directories(paths.debugfs + "/" + kind);
    for (const char* attr : {"probability", "times", "interval", "task-filter", "space", "verbose"})
      std::ofstream(paths.debugfs + "/" + kind + "/" + attr) << "x\n";
  }
  std::ofstream(paths.debugfs + "/fail_function/inject") << "old_function\n";
  FaultSpec f;
  f.source = FaultSource::fault_inject;
  f.probability = 75;
  f.times = 3;
  // The trigger records whether it runs marked.
  f.trigger = "cat '" + paths.proc_self + "/make-it-fail' > '" + dir + "/marked'";
  // The trigger runs in the background: wait (up to 5 s) for what it wrote.
  auto ran_marked = [&] {
    for (int i = 0; i < 250 && read_all(dir + "/marked").empty(); ++i) std::this_thread::sleep_for(std::chrono::milliseconds(20));
    return read_all(dir + "/marked") == "1\n";
  };
  Injection inj;
  inj.type = "fail_function";
  inj.fault = "fail_function:realdev_open";
  REQUIRE(run_sh(fault_inject_script(f, inj, paths)) == 0);
  std::string d = paths.debugfs + "/fail_function/";
  CHECK(ran_marked());
  CHECK(read_all(d + "inject") == "realdev_open\n");
  CHECK(read_all(d + "probability") == "75\n");
  CHECK(read_all(d + "times") == "3\n");
  CHECK(read_all(d + "interval") == "0\n");
  CHECK(read_all(d + "task-filter") == "1\n");
  CHECK(read_all(d + "verbose") == "1\n");
  REQUIRE(run_sh(fault_inject_cleanup(inj, paths)) == 0);
  CHECK(read_all(d + "probability") == "0\n");
  CHECK(read_all(d + "inject") == "\n");
  // failslab: sleeping allocations fail too (the kernel spares them by default).
  std::filesystem::remove(dir + "/marked");
  inj.type = "failslab";
  inj.fault = "failslab";
  REQUIRE(run_sh(fault_inject_script(f, inj, paths)) == 0);
  CHECK(ran_marked());
  CHECK(read_all(paths.debugfs + "/failslab/ignore-gfp-wait") == "N\n");
  CHECK(read_all(paths.debugfs + "/failslab/probability") == "75\n");
  REQUIRE(run_sh(fault_inject_cleanup(inj, paths)) == 0);
  // A kind the kernel lacks: exit 3, saying which option it needs.
  inj.type = "fail_page_alloc";
  inj.fault = "fail_page_alloc";
  CHECK(run_sh("(" + fault_inject_script(f, inj, paths) + "\n) >/dev/null") == 3);
  CHECK(run_sh(fault_inject_cleanup(inj, paths)) != 0);  // nothing to reset: a false test, no write
  CHECK(!std::filesystem::exists(paths.debugfs + "/fail_page_alloc"));
  std::filesystem::remove_all(dir);
}

TEST_CASE("guest files: a plan's files named, checked and copied in chunks of shell commands", "[campaign]") {
  std::string dir = temp_dir("guest-files");
  std::string module = dir + "/my_drv.ko";
  std::string bytes;
  for (int i = 0; i < 2500; ++i) bytes += static_cast<char>((i * 7 + i / 256) & 0xff);  // every byte value, NULs too
  bytes += "'\"$(reboot)`x`\n";                                                        // nothing of it is run
  std::ofstream(module, std::ios::binary) << bytes;

  const std::string head = "name = \"x\"\n[[faults]]\nsource = \"module\"\ntypes = [\"m\"]\ntrigger = \"t\"\n";
  CampaignPlan plan = parse_campaign_plan(head + "files = [\"" + module + "\"]\nsetup = \"insmod /run/immortal-campaign/my_drv.ko\"\n", "p.toml");
  CHECK(plan.faults[0].files == std::vector<std::string>{module});
  CHECK_THAT(plan_error(head + "files = [\"" + dir + "/.hidden\"]\n"), Contains("p.toml:6") && Contains("a file's name in the guest"));
  CHECK_THAT(plan_error(head + "files = [\"a b.ko\"]\n"), Contains("a file's name in the guest"));
  CHECK_THAT(plan_error(head + "files = [\"/\"]\n"), Contains("a file's name in the guest"));
  CHECK_THAT(plan_error(head + "files = 3\n"), Contains("a string or an array of strings"));
  CHECK_THAT(plan_error("name = \"x\"\n[[faults]]\nsource = \"driver\"\ntypes = [\"bug\"]\nfiles = [\"a.ko\"]\n"),
             Contains("\"files\" are for source = \"module\" or \"fault-inject\""));
  CHECK_THAT(plan_error(head + "files = [\"a/m.ko\"]\n[[faults]]\nsource = \"module\"\ntypes = [\"n\"]\ntrigger = \"t\"\nfiles = [\"b/m.ko\"]\n"),
             Contains("would both be /run/immortal-campaign/m.ko"));
  // The files must be there when the plan is read, not at the guest's first boot.
  std::string plan_path = dir + "/plan.toml";
  std::ofstream(plan_path) << head << "files = [\"" << dir << "/missing.ko\"]\n";
  try {
    read_campaign_plan(plan_path);
    FAIL("a missing file was accepted");
  } catch (const Error& e) {
    CHECK(e.exit_code() == static_cast<int>(ExitCode::bad_input));
    CHECK_THAT(std::string(e.what()), Contains("missing.ko"));
  }
  std::ofstream(plan_path, std::ios::trunc) << head << "files = [\"" << module << "\"]\n";
  CHECK(read_campaign_plan(plan_path).faults[0].files.size() == 1);

  // The commands, run by a shell as the guest's agent runs them, rebuild the file byte for byte;
  // the file appears under its name only when whole.
  std::string guest = dir + "/guest dir";  // a space: every path is quoted
  // As the agent will take them: at most 4096 bytes per argument, 256 arguments.
  auto within_limits = [](const GuestShellCommand& c) {
    return c.script.size() <= 4096 && c.args.size() + 4 <= 256 &&
           std::all_of(c.args.begin(), c.args.end(), [](const std::string& a) { return a.size() <= 4096; });
  };
  auto commands = guest_file_commands(guest, "my_drv.ko", read_guest_file(module), 1000);
  CHECK(commands.size() == 3);
  for (std::size_t i = 0; i < commands.size(); ++i) {
    CHECK(within_limits(commands[i]));
    CHECK(!std::filesystem::exists(guest + "/my_drv.ko"));
    REQUIRE(run_sh(commands[i]) == 0);
  }
  // The default chunks: a module of a few hundred KiB in two commands, each within the limits.
  std::string big(600 << 10, '\0');
  for (std::size_t i = 0; i < big.size(); ++i) big[i] = static_cast<char>(i * 131 % 251);
  auto big_commands = guest_file_commands(guest, "big.ko", big);
  CHECK(big_commands.size() == 2);
  for (const auto& c : big_commands) {
    CHECK(within_limits(c));
    REQUIRE(run_sh(c) == 0);
  }
  CHECK(read_all(guest + "/big.ko") == big);
  CHECK(read_all(guest + "/my_drv.ko") == bytes);
  CHECK(!std::filesystem::exists(guest + "/.my_drv.ko.partial"));
  auto empty = guest_file_commands(guest, "empty", "");
  REQUIRE(empty.size() == 1);
  REQUIRE(run_sh(empty[0]) == 0);
  CHECK(std::filesystem::file_size(guest + "/empty") == 0);
  // A chunk lost on the way: the size check fails and nothing appears under the name.
  auto lossy = guest_file_commands(guest, "lossy", bytes, 1000);
  REQUIRE(run_sh(lossy[0]) == 0);
  CHECK(run_sh(lossy[2]) != 0);
  CHECK(!std::filesystem::exists(guest + "/lossy"));
  CHECK(valid_guest_file_name("lkdtm-2.ko"));
  CHECK(!valid_guest_file_name(std::string(101, 'a')));
  std::filesystem::remove_all(dir);
}
