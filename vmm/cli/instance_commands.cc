// `immortal list | status | exec | stop`: talk to a running supervisor over its control socket.
#include "base/error.h"
#include "base/terminal_text.h"
#include "cli/arguments.h"
#include "cli/commands.h"
#include "cli/crash_outcome.h"
#include "cli/event_follower.h"
#include "cli/instance_call.h"
#include "control/control_channel.h"
#include "fault_catalogue.h"
#include "instance.h"
#include "instance_definitions.h"
#include "report/kernel_json.h"

#include <fmt/format.h>

#include <unistd.h>

#include <algorithm>
#include <fstream>
#include <optional>
#include <iostream>
#include <thread>

namespace immortal::vmm {

namespace {

std::string control_socket(const GlobalOptions& g, const std::string& name) {
  check_instance_name(name);
  std::string root = runtime_root(g.runtime_dir);
  if (!instance_running(root, name)) fail(ExitCode::no_instance, "no running instance named \"{}\"", name);
  return root + "/" + name + "/control.sock";
}

json call(const GlobalOptions& g, const std::string& name, const json& request, std::chrono::milliseconds timeout) {
  return call_instance(g, name, request, timeout);
}

std::string mib(const json& bytes) {
  return fmt::format("{} MiB", bytes.is_number() ? bytes.get<std::uint64_t>() >> 20 : 0);
}

}  // namespace

json call_instance(const GlobalOptions& g, const std::string& name, const json& request, std::chrono::milliseconds timeout) {
  return control_call(control_socket(g, name), request, Deadline::in(timeout));
}

int list_command(const GlobalOptions& g, bool as_json, bool all) {
  std::string root = runtime_root(g.runtime_dir);
  json list = json::array();
  for (const auto& name : running_instances(root)) {
    try {
      list.push_back(control_call(root + "/" + name + "/control.sock", {{"command", "status"}},
                                 Deadline::in(std::chrono::seconds(3))));
    } catch (const Error&) {
      list.push_back({{"name", name}, {"state", "unresponsive"}});
    }
  }
  if (all) {
    // virsh list --all: the defined instances too, running or not.
    std::vector<std::string> problems;
    DefinitionStore store(config_root(g.config_dir));
    for (const auto& d : store.all(&problems)) {
      auto it = std::find_if(list.begin(), list.end(), [&](const json& s) { return s.value("name", "") == d.name; });
      if (it == list.end()) {
        json row = {{"name", d.name}, {"state", "shut off"}, {"vcpus", d.settings.value("vcpus", 0)}};
        try {
          row["memory_bytes"] = parse_memory_size(d.settings.value("memory", ""));
        } catch (const Error&) {
        }
        it = list.insert(list.end(), row);
      }
      (*it)["defined"] = true;
      (*it)["autostart"] = d.autostart;
    }
    for (const auto& p : problems) std::cerr << "immortal: " << p << "\n";
  }
  if (as_json) {
    std::cout << list.dump(2) << "\n";
    return 0;
  }
  std::cout << fmt::format(" {:<20} {:<12} {:>5} {:>10}  {:<24}{}\n", "Name", "State", "vCPUs", "Memory", "Kernel",
                           all ? " Autostart" : "");
  std::cout << std::string(all ? 83 : 72, '-') << "\n";
  for (const auto& s : list)
    std::cout << fmt::format(" {:<20} {:<12} {:>5} {:>10}  {:<24}{}\n", s.value("name", "?"), s.value("state", "?"),
                             s.value("vcpus", 0), mib(s.value("memory_bytes", json(0))), terminal_safe(s.value("kernel_release", "-")),
                             !all ? "" : !s.value("defined", false) ? " -" : s.value("autostart", false) ? " enable" : " disable");
  return 0;
}

int status_command(const GlobalOptions& g, const std::string& name, bool as_json) {
  // The supervisor answers between two pieces of its own work; taking in a new guest profile
  // (module BTF, symbols, the healthy code copy) can keep it busy for seconds on a loaded host.
  json s = call(g, name, {{"command", "status"}}, kBusySupervisorWait);
  s.erase("ok");
  if (as_json) {
    std::cout << s.dump(2) << "\n";
    return 0;
  }
  const json& agent = s.value("agent", json::object());
  std::string agent_line = agent.value("connected", false)
                               ? fmt::format("connected, {} heartbeats, last heard {:.1f} s ago",
                                             agent.value("heartbeats", 0), agent.value("last_heard_s", 0.0))
                               : "not connected";
  // Values the guest gave (kernel release, crash summaries) reach the terminal escaped.
  auto row = [](const char* key, const std::string& value) {
    std::cout << fmt::format("{:<16}{}\n", key, terminal_safe(value));
  };
  row("Name:", s.value("name", ""));
  row("State:", s.value("state", ""));
  row("Supervisor PID:", std::to_string(s.value("supervisor_pid", 0)));
  row("VM PID:", fmt::format("{} ({})", s.value("vm_pid", 0), s.value("backend", "?")));
  std::vector<std::string> capabilities;
  for (const auto& c : s.value("capabilities", json::array()))
    if (c.is_string()) capabilities.push_back(c.get<std::string>());
  row("Capabilities:", capabilities.empty() ? "none" : fmt::format("{}", fmt::join(capabilities, ", ")));
  row("Accelerator:", s.value("accelerator", "") + " (" + s.value("accelerator_reason", "") + ")");
  std::string recovery = s.value("recovery", "?");
  const json& rs = s.value("recovery_state", json::object());
  if (recovery == "on") {
    std::vector<std::string> kinds;
    for (const auto& k : rs.value("kinds", json::array())) kinds.push_back(k.get<std::string>());
    recovery = fmt::format("on ({}; at most {}), {}", fmt::join(kinds, " "), rs.value("limit", "?"),
                           rs.value("armed", false) ? "armed at " + fmt::format("{}", fmt::join(rs.value("interception", std::vector<std::string>{}), ", "))
                                                    : "not armed yet");
  }
  row("Recovery:", recovery);
  row("Crashes:", fmt::format("{} caught, {} recovered, {} rebooted", rs.value("crashes", 0), rs.value("recovered", 0),
                              rs.value("reboots", 0)));
  if (s.contains("last_crash")) {
    const json& c = s["last_crash"];
    row("Last crash:", fmt::format("#{} at {}: {}", c.value("crash", 0), c.value("time", ""), c.value("summary", "")));
    row("", fmt::format("→ {} ({})", c.value("outcome", c.value("decision", "")), c.value("reason", "")));
    if (c.contains("bundle")) row("", "bundle: " + c.value("bundle", ""));
  }
  if (s.contains("bundles") && s["bundles"].is_object()) {
    const json& b = s["bundles"];
    row("Bundles:", fmt::format("{} written{} to {}", b.value("written", 0),
                                b.value("writing", 0) ? fmt::format(", {} being written", b.value("writing", 0)) : "",
                                b.value("dir", "")));
  }
  if (s.contains("repair") && s["repair"].is_object()) {
    const json& r = s["repair"];
    std::string mode = r.value("mode", "");
    std::string line = "--repair " + mode + ", fallback " + r.value("fallback", "");
    for (const char* m : {"vm", "inline"})
      if (r.contains(m) && r[m].is_object())
        line += fmt::format("; {}: {}", m, r[m].value("state", "?"));
    row("Repair:", line);
    // The repair payload: the guest's own part of the profile, beside the host's kernel files.
    if (const json& image = r.value("image", json::object()); image.contains("payload_bytes")) {
      std::string payload = fmt::format("{:.1f} MB", image.value("payload_bytes", 0.0) / 1e6);
      std::vector<std::string> from_host;
      for (const auto& part : image.value("kernel_parts_from_host", json::array()))
        if (part.is_string()) from_host.push_back(part.get<std::string>());
      if (!from_host.empty()) payload += fmt::format(", the guest's part (from the host's files: {})", fmt::join(from_host, ", "));
      for (const auto& why : image.value("kernel_parts_kept", json::array()))
        if (why.is_string()) payload += "; kept: " + why.get<std::string>();
      row("Repair payload:", payload);
    }
    // What the repair VM reads of the guest: only snapshots the supervisor hands it, or its RAM.
    if (const json& vm = r.value("vm", json::object()); vm.contains("guest_ram_window")) {
      std::string reads = vm.value("guest_ram_window", true) ? "the guest's RAM (a read-only window)"
                                                             : "snapshots only (no window onto the guest's RAM)";
      if (const json& load = vm.value("load", json::object()); load.contains("pages"))
        reads += fmt::format("; last profile loaded from a snapshot of {} pages (taken in {:.1f} ms)", load.value("pages", 0),
                             load.value("snapshot_ms", 0.0));
      row("Repair VM:", "reads " + reads);
      // One VM for the guests of this kernel (--repair-vm-shared): which slot, with how many others.
      if (const json& shared = vm.value("shared", json::object()); shared.contains("slot")) {
        std::string with = shared.contains("guests") ? fmt::format("{} guest(s) now", shared.value("guests", 0)) : "other guests";
        row("", fmt::format("shared with {} (slot {} of {}, QEMU pid {}): {}", with, shared.value("slot", -1),
                            shared.value("slots", 0), shared.value("qemu_pid", 0), shared.value("dir", "")));
      }
    }
  }
  for (const auto& q : rs.value("quarantined", json::array()))
    row("Quarantined:", fmt::format("{} [{}] at {} since crash {}", q.value("function", ""), q.value("module", ""),
                                    q.value("address", ""), q.value("crash", 0)));
  row("vCPUs:", std::to_string(s.value("vcpus", 0)));
  row("Memory:", mib(s.value("memory_bytes", json(0))));
  for (const auto& d : s.value("disks", json::array()))
    if (d.is_string()) row("Disk:", d.get<std::string>());
  for (const auto& n : s.value("nets", json::array()))
    if (n.is_object()) row("Network:", n.value("net", "") + " (MAC " + n.value("mac", "") + ")");
  for (const auto& ch : s.value("channels", json::array()))
    if (ch.is_string()) row("Channel:", ch.get<std::string>());
  row("Kernel:", s.value("kernel_release", "-"));
  // The kernel's parts held once per host (profile.kernel_symbols, kernel_types, kernel_unwind_tables).
  for (const auto& [key, label] : {std::pair{"kernel_symbols", "Symbols:"}, std::pair{"kernel_types", "Types:"},
                                   std::pair{"kernel_unwind_tables", "Unwind tables:"}})
    if (const json& part = s.value("profile", json::object()).value(key, json::object()); part.is_object() && !part.empty())
      row(label, part.value("shared", false) ? "the host's copy, shared by its guests of this kernel (" + part.value("file", "") + ")"
                                             : "a copy of its own: " + part.value("why", ""));
  row("Boot ID:", s.value("boot_id", "-"));
  if (s.contains("boot_time_ms")) row("Boot time:", fmt::format("{:.2f} s", s["boot_time_ms"].get<double>() / 1000));
  row("Uptime:", fmt::format("{:.0f} s", s.value("uptime_s", 0.0)));
  row("Agent:", agent_line);
  row("Runtime dir:", s.value("runtime_dir", ""));
  row("Console log:", s.value("console_log", ""));
  if (!s.value("console_socket", "").empty()) row("Console:", "immortal console " + s.value("name", ""));
  return 0;
}

int exec_command(const GlobalOptions& g, const std::string& name, const std::vector<std::string>& argv,
                 int timeout_s) {
  json request = {{"command", "exec"}, {"argv", argv}, {"timeout_ms", timeout_s * 1000}};
  ExecOutcome o = exec_outcome(call(g, name, request, std::chrono::seconds(timeout_s + 10)), timeout_s);
  std::cout << o.out;
  std::cout.flush();
  std::cerr << o.err;
  return o.status;
}

int list_faults_command() {
  std::cout << fmt::format("{:<16} {:<26} {}\n", "Class", "Context", "What the driver does");
  std::cout << std::string(100, '-') << "\n";
  for (const auto& f : fault_catalogue()) std::cout << fmt::format("{:<16} {:<26} {}\n", f.name, f.context, f.action);
  std::cout << fmt::format("{:<16} {:<26} {}\n", "lkdtm:TYPE", "(depends on TYPE)",
                           "runs the kernel's own crash test TYPE (LKDTM, e.g. lkdtm:BUG, lkdtm:EXCEPTION)");
  std::cout << fmt::format("\nThe guest's LKDTM types: immortal exec NAME -- cat {}\n"
                           "(what each does: docs/fault-catalogue.md, \"LKDTM types\")\n", kLkdtmTrigger);
  return 0;
}

namespace {

// `inject --wait`: the crash the injection caused and what became of it, from the event log.
// Exit status 0 when it was recovered, 7 when the guest was rebooted (or handed to its kdump),
// 8 when no outcome came in time, 1 when the fault did not crash the guest at all.
int wait_for_outcome(EventFollower& follower, const json& injected, const std::string& name, int wait_s, bool as_json) {
  json result = injected;
  result.erase("ok");
  result.update(follow_crash_outcome(follower, std::chrono::seconds(wait_s), std::chrono::seconds(60)));
  std::string outcome = result.value("outcome", "unknown");
  std::uint64_t crash = result.value("crash", std::uint64_t{0});
  if (as_json) {
    std::cout << result.dump(-1, ' ', false, json::error_handler_t::replace) << "\n";
  } else if (crash) {
    std::cout << fmt::format("crash {} in {}: {}\n", crash, name, terminal_safe(result.value("summary", "")));
    if (outcome == "recovered")
      std::cout << fmt::format("recovered: resumed {:.1f} ms after interception, verified healthy\n",
                               result.value("intercept_to_resume_ms", 0.0));
    else
      std::cout << outcome << (result.contains("reason") ? ": " + terminal_safe(result.value("reason", "")) : "") << "\n";
  } else {
    std::cout << (outcome == "no-crash" ? "the fault did not crash the guest (a quarantined entry point refuses it: "
                                          "immortal status)\n"
                                        : outcome + ": no crash seen\n");
  }
  if (outcome == "recovered") return 0;
  if (outcome == "rebooted" || outcome == "kdump" || (outcome == "instance-ended" && crash))
    return static_cast<int>(ExitCode::guest_crashed);
  if (outcome == "unknown") return static_cast<int>(ExitCode::timeout);
  return static_cast<int>(ExitCode::failure);
}

}  // namespace

int inject_command(const GlobalOptions& g, const std::string& given_name, const std::string& fault_class,
                   const InjectWait& wait) {
  // Unknown classes are refused here, before any guest is involved. An LKDTM type is checked
  // for its shape only: the guest's LKDTM knows which types exist (the supervisor asks it).
  if (is_lkdtm_class(fault_class) && !lkdtm_type(fault_class))
    fail(ExitCode::usage, "bad LKDTM type in \"{}\": lkdtm:TYPE takes 1 to 40 of A-Z, 0-9 and _ "
         "(immortal inject --list)", fault_class);
  if (!is_lkdtm_class(fault_class) && !find_fault_class(fault_class))
    fail(ExitCode::usage, "unknown fault class \"{}\" (immortal inject --list shows them)", fault_class);
  std::string name = given_name;
  if (name.empty()) {
    auto running = running_instances(runtime_root(g.runtime_dir));
    name = running.size() == 1 ? running[0] : "guest";
  }
  // The supervisor answers within the agent's deadlines (a check, then the start): 45 s covers
  // a guest slowed down by its neighbours.
  std::optional<EventFollower> follower;
  if (wait.wait) follower.emplace(runtime_root(g.runtime_dir), name, /*from_end=*/true);  // before the crash
  json r = call(g, name, {{"command", "inject"}, {"class", fault_class}}, std::chrono::seconds(45));
  if (wait.wait) return wait_for_outcome(*follower, r, name, wait.timeout_s, wait.json);
  std::string command;
  for (const auto& a : r.value("command", json::array()))
    if (a.is_string()) command += (command.empty() ? "" : " ") + a.get<std::string>();
  if (r.value("crashed_before_pid", false))
    std::cout << fmt::format("injected {} into {}: victim pid unknown, the guest crashed before its agent reported it ({})\n",
                             fault_class, name, command);
  else
    std::cout << fmt::format("injected {} into {}: victim pid {} ({})\n", fault_class, name, r.value("pid", 0), command);
  return 0;
}

int introspect_command(const GlobalOptions& g, const std::string& name, const std::string& part, bool as_json) {
  json r = call(g, name, {{"command", "introspect"}, {"part", part}}, std::chrono::seconds(30));
  r.erase("ok");
  if (as_json) {
    std::cout << r.dump(2, ' ', false, json::error_handler_t::replace) << "\n";
    return 0;
  }
  if (part == "tasks") std::cout << render_tasks(r.value("tasks", json::array()));
  else if (part == "modules") std::cout << render_modules(r.value("modules", json::array()));
  else std::cout << render_kernel_log(r.value("records", json::array()));
  if (r.contains("problem")) std::cerr << "immortal: incomplete: " << r["problem"].get<std::string>() << "\n";
  return 0;
}

int dump_command(const GlobalOptions& g, const std::string& name, const std::string& file) {
  std::string path = file;
  if (path.empty()) fail(ExitCode::usage, "dump needs a file name");
  if (path[0] != '/') {
    char cwd[4096];
    if (!::getcwd(cwd, sizeof cwd)) fail_os(ExitCode::failure, "getcwd", errno);
    path = std::string(cwd) + "/" + path;
  }
  json r = call(g, name, {{"command", "dump"}, {"path", path}}, std::chrono::minutes(11));
  std::cout << fmt::format("Domain {} dumped to {} ({:.2f} s, QEMU's dump-guest-memory)\n", name, path,
                           r.value("seconds", 0.0));
  return 0;
}

int unquarantine_command(const GlobalOptions& g, const std::string& name, const std::vector<std::string>& functions,
                         bool all) {
  if (functions.empty() && !all) fail(ExitCode::usage, "name the functions to unquarantine, or use --all");
  json r = call(g, name, {{"command", "unquarantine"}, {"functions", functions}, {"all", all}}, std::chrono::seconds(10));
  auto released = r.value("released", json::array());
  if (released.empty()) std::cout << "Nothing was quarantined\n";
  for (const auto& line : released) std::cout << terminal_safe(line.get<std::string>()) << "\n";
  return 0;
}


int bundle_command(const GlobalOptions& g, const std::string& name, int timeout_s, bool as_json) {
  if (!as_json)
    std::cerr << "immortal: taking a bundle of \"" << name << "\" (the guest pauses only while its memory is copied)\n";
  json r = call(g, name, {{"command", "bundle"}}, std::chrono::seconds(timeout_s));
  if (as_json) {
    r.erase("ok");
    std::cout << r.dump() << "\n";
    return 0;
  }
  std::cout << r.value("path", "") << "\n";
  std::cerr << fmt::format("immortal: bundle written in {:.1f} s (vmcore {})\n", r.value("write_ms", 0.0) / 1000,
                           mib(r.value("vmcore_bytes", json(0))));
  return 0;
}

int stop_command(const GlobalOptions& g, const std::string& name, bool force, bool shutdown, int timeout_s) {
  json answer = call(g, name, {{"command", "stop"}, {"force", force}, {"shutdown", shutdown}}, kBusySupervisorWait);
  std::string root = runtime_root(g.runtime_dir);
  auto deadline = Deadline::in(std::chrono::seconds(timeout_s));
  while (instance_running(root, name)) {
    if (deadline.expired()) fail(ExitCode::timeout, "instance \"{}\" did not stop within {} s", name, timeout_s);
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  if (answer.value("detaching", false))
    std::cout << "Instance " << name << " detached: its VM runs on (not immortal's to power off; stop --shutdown does)\n";
  else
    std::cout << "Instance " << name << " stopped\n";
  return 0;
}

}  // namespace immortal::vmm
