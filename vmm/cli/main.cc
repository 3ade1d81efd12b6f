// immortal: the supervisor's command line, in the manner of virsh.
//   immortal run [--name NAME] [--detach] ...   start a supervised guest
//   immortal list | status NAME | exec NAME -- CMD... | stop NAME
//   immortal attach NAME | upgrade NAME [--binary PATH]   a new supervisor for a running guest
#include "base/error.h"
#include "cli/commands.h"
#include "cli/option_sets.h"
#include "daemon/host_daemon.h"
#include "machine_backends.h"
#include "recovery/recovery_policy.h"
#include "report/dump_report.h"

#include <CLI/CLI.hpp>

#include <filesystem>
#include <iostream>

using namespace immortal;
using namespace immortal::vmm;

int main(int argc, char** argv) {
  CLI::App app{"immortal: Linux virtual machines that survive kernel crashes"};
  app.require_subcommand(1);
  GlobalOptions global;
  app.add_option("--runtime-dir", global.runtime_dir,
                 "where instances keep their sockets (default: $IMMORTAL_RUNTIME_DIR or /run/immortal)");
  app.add_option("--config-dir", global.config_dir,
                 "where saved definitions are kept (default: $IMMORTAL_CONFIG_DIR or /etc/immortal)");
  app.set_version_flag("--version", "immortal 0.1.0");

  RunOptions run;
  auto* run_cmd = app.add_subcommand("run", "boot a guest under supervision");
  run_cmd->add_flag("-d,--detach", run.detach, "return once the guest is up; the supervisor keeps running");
  run_cmd->add_flag("--console", run.console, "copy the guest's serial console to the terminal");
  add_machine_options(run_cmd, run);
  add_protection_options(run_cmd, run);

  // Saved definitions, as virsh define/start/autostart/undefine.
  RunOptions defined;
  auto* define_cmd = app.add_subcommand("define", "save an instance's definition (run's options) to start later, or "
                                                  "at the host service's start with autostart");
  add_machine_options(define_cmd, defined);
  add_protection_options(define_cmd, defined);
  bool start_foreground = false, start_console = false;
  auto* start_cmd = app.add_subcommand("start", "start a defined instance (returns once the guest is up)");
  auto* autostart_cmd = app.add_subcommand("autostart", "start a defined instance whenever the host service (immortal daemon) starts");
  auto* undefine_cmd = app.add_subcommand("undefine", "forget a saved definition (a running instance runs on)");
  std::string defined_name;
  for (auto* cmd : {start_cmd, autostart_cmd, undefine_cmd}) cmd->add_option("name", defined_name, "instance name")->required();
  start_cmd->add_flag("--foreground", start_foreground, "stay in the foreground as the supervisor, as run does");
  start_cmd->add_flag("--console", start_console, "with --foreground: copy the guest's serial console to the terminal");
  bool autostart_disable = false;
  autostart_cmd->add_flag("--disable", autostart_disable, "no longer start it with the host service");

  bool list_json = false;
  auto* list_cmd = app.add_subcommand("list", "list running instances");
  list_cmd->add_flag("--json", list_json, "machine-readable output");
  bool list_all = false;
  list_cmd->add_flag("--all", list_all, "also the defined instances that are not running");
  std::string list_uri;
  list_cmd->add_option("-c,--connect", list_uri,
                       "instead: every domain of this libvirt connection (qemu+ssh://HOST/system for another host) and "
                       "its protection, as its supervisor last told libvirt (read-only)");

  std::string name;
  bool status_json = false;
  auto* status_cmd = app.add_subcommand("status", "show an instance's state");
  status_cmd->add_option("name", name, "instance name")->required();
  status_cmd->add_flag("--json", status_json, "machine-readable output");

  std::vector<std::string> command;
  int exec_timeout = 60;
  auto* exec_cmd = app.add_subcommand("exec", "run a command in the guest through the agent");
  exec_cmd->add_option("name", name, "instance name")->required();
  exec_cmd->add_option("command", command, "command and arguments (after --, passed byte for byte)");
  exec_cmd->add_option("-t,--timeout", exec_timeout, "seconds before the command is killed (default: 60)")
      ->check(CLI::Range(1, 86400));

  std::string fault_class;
  bool list_faults = false;
  auto* inject_cmd = app.add_subcommand("inject", "make the guest's fault-injection driver (or the kernel's LKDTM) crash the kernel");
  inject_cmd->add_option("name", name, "instance name (default: the only running instance, else \"guest\")");
  inject_cmd->add_option("class", fault_class, "fault class (see --list), or lkdtm:TYPE for an LKDTM crash type");
  inject_cmd->add_flag("-l,--list", list_faults, "list the fault classes");
  InjectWait inject_wait;
  inject_cmd->add_flag("-w,--wait", inject_wait.wait,
                       "return once the crash's outcome is known: exit 0 recovered, 7 rebooted, 8 no outcome in time, "
                       "1 no crash");
  inject_cmd->add_flag("--json", inject_wait.json, "with --wait: the outcome as one JSON object");
  inject_cmd->add_option("--wait-timeout", inject_wait.timeout_s, "with --wait: seconds to wait (default: 300)")
      ->check(CLI::Range(1, 86400));

  CampaignCommand campaign;
  auto* campaign_cmd = app.add_subcommand("campaign", "run a fault campaign: many injections, with stock-kernel baselines, "
                                                      "in a report (docs/campaigns.md)");
  campaign_cmd->add_option("plan", campaign.plan, "the campaign's plan (TOML)");
  campaign_cmd->add_option("-o,--output", campaign.output, "directory of results and report (default: NAME.campaign); "
                                                           "a campaign interrupted there resumes");
  campaign_cmd->add_flag("--restart", campaign.restart, "set the directory's earlier results aside and start again");
  campaign_cmd->add_flag("-n,--dry-run", campaign.dry_run, "list the injections the plan makes, run nothing");
  campaign_cmd->add_option("--report", campaign.report_dir, "only write the report of the results in DIR");

  std::string dump_file;
  auto* dump_cmd = app.add_subcommand("dump", "write an ELF core of the guest's memory (QEMU's own dump)");
  dump_cmd->add_option("name", name, "instance name")->required();
  dump_cmd->add_option("file", dump_file, "output file")->required();

  // Live views of the guest kernel, read by the host from guest memory (like crash's ps/mod/log).
  bool view_json = false;
  std::vector<std::pair<CLI::App*, std::string>> views;
  for (auto [verb, part, help] : {std::tuple{"ps", "tasks", "the guest's tasks, read from its memory by the host"},
                                  std::tuple{"lsmod", "modules", "the guest's modules, read from its memory by the host"},
                                  std::tuple{"dmesg", "dmesg", "the guest kernel's log, read from its memory by the host"}}) {
    auto* cmd = app.add_subcommand(verb, help);
    cmd->add_option("name", name, "instance name")->required();
    cmd->add_flag("--json", view_json, "machine-readable output");
    views.emplace_back(cmd, part);
  }

  DiagOptions diag;
  auto* diag_cmd = app.add_subcommand("diag", "analyse a bundle or a dump offline: what crashed, where, who, what was done; tasks, modules, log, backtraces");
  diag_cmd->add_option("dump", diag.dump, "a bundle (directory or .tar.zst), or a vmcore (ours, kdump's, QEMU's)")->required();
  diag_cmd->add_option("-p,--profile", diag.profile,
                       "healthy-guest profile directory (default: the bundle's; for a bare vmcore, the kernel's own tables in it)");
  diag_cmd->add_option("--vmlinux", diag.vmlinux, "vmlinux with DWARF: types from it, source lines in backtraces");
  diag_cmd->add_option("--modules-dir", diag.modules_dir, "directory with the modules' .ko files (DWARF): source lines")
      ->check(CLI::ExistingDirectory);
  diag_cmd->add_flag("--tasks", diag.tasks, "list tasks");
  diag_cmd->add_flag("--modules", diag.modules, "list modules");
  diag_cmd->add_flag("--dmesg", diag.dmesg, "print the kernel log");
  diag_cmd->add_flag("--bt", diag.backtraces, "backtraces of every CPU");
  diag_cmd->add_flag("--json", diag.json, "machine-readable output");

  std::vector<std::string> functions;
  bool unquarantine_all = false;
  auto* unquarantine_cmd = app.add_subcommand("unquarantine", "restore driver functions that recovery quarantined");
  unquarantine_cmd->add_option("name", name, "instance name")->required();
  unquarantine_cmd->add_option("function", functions, "function names (see immortal status)");
  unquarantine_cmd->add_flag("-a,--all", unquarantine_all, "every quarantined function");

  bool events_json = false;
  auto* events_cmd = app.add_subcommand("events", "the instance's recent events: crashes, repairs, reboots");
  events_cmd->add_option("name", name, "instance name")->required();
  events_cmd->add_flag("--json", events_json, "one JSON object per line, as in the event log");
  bool events_follow = false;
  events_cmd->add_flag("-f,--follow", events_follow, "then each new event as it happens, until the instance ends (Ctrl-C stops)");

  int bundle_timeout = 600;
  auto* bundle_cmd = app.add_subcommand("bundle", "take a diagnosis bundle of a running guest now (it pauses only to copy memory)");
  bundle_cmd->add_option("name", name, "instance name")->required();
  bool bundle_json = false, bundle_wait = false;
  bundle_cmd->add_flag("-w,--wait", bundle_wait, "return once the bundle is written (what bundle always does; for scripts)");
  bundle_cmd->add_flag("--json", bundle_json, "the bundle's path, size and timings as one JSON object");
  bundle_cmd->add_option("--timeout", bundle_timeout, "seconds to wait for the bundle to be written (default: 600)")
      ->check(CLI::Range(1, 86400));

  bool attach_detach = false, attach_libvirt = false;
  std::string attach_uri, attach_name;
  RunOptions attach_protection;
  auto* attach_cmd = app.add_subcommand(
      "attach", "take over an instance whose VM outlived its supervisor (after a restart, a SIGKILL), or with "
                "--libvirt protect a running libvirt domain (prepared with immortal prepare) without owning it");
  attach_cmd->add_option("name", name, "instance name; with --libvirt: the domain's name, UUID or id")->required();
  attach_cmd->add_flag("-d,--detach", attach_detach, "return once the guest is watched again; the supervisor keeps running");
  attach_cmd->add_flag("--libvirt", attach_libvirt, "NAME is a libvirt domain: supervise it through libvirt");
  attach_cmd->add_option("-c,--connect", attach_uri, "with --libvirt: libvirt URI (default: qemu:///system)");
  attach_cmd->add_option("-n,--name", attach_name, "with --libvirt: instance name (default: the domain's name)");
  add_protection_options(attach_cmd, attach_protection);

  std::string upgrade_binary;
  int upgrade_timeout = 120;
  auto* upgrade_cmd = app.add_subcommand("upgrade", "hand a running instance to another immortal binary, the guest running on; rolled back if the new one does not take over");
  upgrade_cmd->add_option("name", name, "instance name")->required();
  upgrade_cmd->add_option("--binary", upgrade_binary, "the new immortal (default: this one)");
  upgrade_cmd->add_option("--timeout", upgrade_timeout, "seconds for the new supervisor to re-arm interception, else rollback (default: 120)")
      ->check(CLI::Range(10, 3600));

  auto* console_cmd = app.add_subcommand("console", "the guest's serial console on this terminal (Ctrl-] detaches)");
  console_cmd->add_option("name", name, "instance name")->required();

  // libvirt domains (virsh's -c/--connect; qemu:///system by default).
  std::string connect_uri;
  bool assume_yes = false;
  auto* prepare_cmd = app.add_subcommand(
      "prepare", "edit a libvirt domain's definition so immortal can protect it (shared RAM file, pvpanic, the "
                 "agent's channel, on_crash preserve); shows the difference and asks first");
  auto* unprepare_cmd = app.add_subcommand("unprepare", "undo what prepare changed in a libvirt domain's definition");
  for (auto* cmd : {prepare_cmd, unprepare_cmd}) {
    cmd->add_option("domain", name, "libvirt domain: name, UUID or id")->required();
    cmd->add_option("-c,--connect", connect_uri, "libvirt URI (default: qemu:///system)");
    cmd->add_flag("-y,--yes", assume_yes, "apply without asking (needed without a terminal)");
  }

  std::string daemon_uri;
  RunOptions daemon_protection;
  auto* daemon_cmd = app.add_subcommand(
      "daemon", "the host service: start the defined instances marked autostart, and protect every prepared domain of "
                "a libvirt connection while it runs, attaching as domains start (or are restored, or migrate in); SIGTERM "
                "detaches the domains and shuts the instances down");
  daemon_cmd->add_option("-c,--connect", daemon_uri, "libvirt URI (default: qemu:///system)");
  bool daemon_no_libvirt = false;
  daemon_cmd->add_flag("--no-libvirt", daemon_no_libvirt, "only the autostart instances: no libvirt connection (without it, one is tried until libvirt answers)");
  add_protection_options(daemon_cmd, daemon_protection);

  bool force = false;
  int stop_timeout = 30;
  auto* stop_cmd = app.add_subcommand("stop", "power the guest off and end its supervisor");
  stop_cmd->add_option("name", name, "instance name")->required();
  stop_cmd->add_flag("-f,--force", force, "do not wait for the guest to power itself off");
  bool stop_shutdown = false;
  stop_cmd->add_flag("--shutdown", stop_shutdown,
                     "also power off a VM immortal does not own (a libvirt domain: without it, stop detaches)");
  stop_cmd->add_option("--timeout", stop_timeout, "seconds to wait for the instance to end (default: 30)")
      ->check(CLI::Range(1, 3600));

  // What follows `exec NAME --` goes to the guest byte for byte: CLI11 would rewrite some of it
  // (an argument in brackets becomes a list: `[ -f /a ]`, `[1,2]`), so it never sees it.
  std::vector<char*> args(argv, argv + argc);
  bool verbatim = false;
  for (int i = 1; i < argc; ++i) {
    std::string_view a = argv[i];
    if (a == "--runtime-dir") ++i;  // the global option's value
    if (a.starts_with("-")) continue;
    if (a != "exec") break;  // the subcommand is another
    for (int j = i + 1; j < argc; ++j)
      if (std::string_view(argv[j]) == "--") {
        command.assign(argv + j + 1, argv + argc);
        args.resize(static_cast<std::size_t>(j));
        verbatim = true;
        break;
      }
    break;
  }
  try {
    app.parse(static_cast<int>(args.size()), args.data());
    if (*exec_cmd && command.empty())
      throw CLI::RequiredError(verbatim ? "a command after --" : "command");
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForAllHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForVersion& e) {
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    std::cerr << "immortal: " << e.what() << "\n";
    std::cerr << "Run 'immortal --help' for usage.\n";
    return static_cast<int>(ExitCode::usage);
  }

  try {
    if (*run_cmd) return run_command(global, run);
    if (*define_cmd) return define_command(global, defined);
    if (*start_cmd) return start_command(global, defined_name, start_foreground, start_console);
    if (*autostart_cmd) return autostart_command(global, defined_name, !autostart_disable);
    if (*undefine_cmd) return undefine_command(global, defined_name);
    if (*list_cmd && !list_uri.empty()) return list_libvirt_command(list_uri, list_json);
    if (*list_cmd) return list_command(global, list_json, list_all);
    if (*status_cmd) return status_command(global, name, status_json);
    if (*exec_cmd) return exec_command(global, name, command, exec_timeout);
    if (*stop_cmd) return stop_command(global, name, force, stop_shutdown, stop_timeout);
    if (*daemon_cmd) {
      DaemonOptions d;
      d.uri = daemon_uri;
      d.libvirt = !daemon_no_libvirt;
      d.runtime_dir = global.runtime_dir;
      d.config_dir = global.config_dir;
      d.metrics_listen = daemon_protection.metrics_listen;
      d.protection = protection_arguments(argc, argv, "daemon");
      d.self = std::filesystem::read_symlink("/proc/self/exe").string();
      return run_daemon(d);
    }
    if (*attach_cmd && attach_libvirt)
      return attach_libvirt_command(global, name, attach_uri, attach_name, attach_protection, attach_detach);
    if (*attach_cmd) return attach_command(global, name, attach_detach);
    if (*prepare_cmd) return prepare_command(name, connect_uri, assume_yes);
    if (*unprepare_cmd) return unprepare_command(name, connect_uri, assume_yes);
    if (*console_cmd) return console_command(global, name);
    if (*upgrade_cmd) return upgrade_command(global, name, upgrade_binary, upgrade_timeout);
    if (*dump_cmd) return dump_command(global, name, dump_file);
    if (*campaign_cmd) return campaign_command(global, campaign);
    if (*unquarantine_cmd) return unquarantine_command(global, name, functions, unquarantine_all);
    if (*events_cmd) return events_command(global, name, events_json, events_follow);
    if (*bundle_cmd) return bundle_command(global, name, bundle_timeout, bundle_json);
    if (*diag_cmd) return diag_command(diag);
    for (auto& [cmd, part] : views)
      if (*cmd) return introspect_command(global, name, part, view_json);
    if (*inject_cmd) {
      if (list_faults) return list_faults_command();
      // `immortal inject CLASS`: one argument is the class, the instance is implied.
      if (fault_class.empty()) std::swap(name, fault_class);
      if (fault_class.empty()) {
        std::cerr << "immortal: inject needs a fault class (immortal inject --list shows them)\n";
        return static_cast<int>(ExitCode::usage);
      }
      return inject_command(global, name, fault_class, inject_wait);
    }
  } catch (const Error& e) {
    std::cerr << "immortal: " << e.what() << "\n";
    return e.exit_code();
  } catch (const std::exception& e) {
    std::cerr << "immortal: internal error: " << e.what() << "\n";
    return static_cast<int>(ExitCode::failure);
  }
  return static_cast<int>(ExitCode::usage);
}
