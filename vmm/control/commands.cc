#include "control/commands.h"

#include "base/clock.h"
#include "base/error.h"
#include "fault_catalogue.h"
#include "protocol/base64.h"
#include "report/kernel_json.h"

#include <fmt/format.h>

namespace immortal::vmm {

namespace {
constexpr int kUsage = static_cast<int>(ExitCode::usage);
constexpr int kFailure = static_cast<int>(ExitCode::failure);
constexpr int kAgent = static_cast<int>(ExitCode::agent);

bool agent_up(const AgentChannel& agent) { return agent.hello() && !agent.closed(); }

json exec_answer(const agent::ExecResult& result) {
  json r = {{"stdout", agent::base64_encode(result.stdout_data)},
            {"stderr", agent::base64_encode(result.stderr_data)},
            {"truncated", result.truncated},
            {"timed_out", result.timed_out}};
  r["exit_code"] = result.exit_code ? json(*result.exit_code) : json(nullptr);
  r["signal"] = result.signal ? json(*result.signal) : json(nullptr);
  if (!result.error.empty()) r["error"] = result.error;
  return r;
}
}  // namespace

void exec_command(ControlRequest request, AgentChannel& agent) {
  const json argv = request.body().value("argv", json::array());
  std::vector<std::string> args;
  if (argv.is_array())
    for (const auto& a : argv)
      if (a.is_string()) args.push_back(a.get<std::string>());
  if (args.empty() || args.size() != argv.size()) return request.fail(kUsage, "exec needs a command");
  if (!agent_up(agent)) return request.fail(kAgent, "the guest agent is not connected");
  auto timeout = request.body().value("timeout_ms", 60'000u);
  agent.exec(args, timeout, [request](const agent::ExecResult* result, const std::string& error) mutable {
    if (!result) return request.fail(kAgent, error);
    request.reply(exec_answer(*result));
  });
}

// Reading LKDTM's trigger lists its types, one a line: grep says 0 (known), 1 (unknown), 2 (no
// file); our own driver is a character device.
void inject_command(ControlRequest request, const GuestStatus& state, AgentChannel& agent, const std::string& guest,
                    const Say& say) {
  std::string name = request.body().value("class", "");
  // "lkdtm:TYPE" asks the guest's LKDTM instead of our driver; the type is checked for its shape
  // here (it goes into a guest command line) and for its existence by the guest's LKDTM below.
  std::optional<std::string> lkdtm = lkdtm_type(name);
  const FaultClass* fault = find_fault_class(name);
  if (!fault && !lkdtm)
    return request.fail(kUsage, (is_lkdtm_class(name) ? "bad LKDTM type in \"" : "unknown fault class \"") + name +
                                    "\" (immortal inject --list shows them)");
  if (!state.is(GuestState::running) || !agent_up(agent))
    return request.fail(kAgent, std::string("the guest is not running with its agent connected (state: ") +
                                    to_string(state.get()) + ")");
  std::string cls = fault ? std::string(fault->name) : name;
  std::vector<std::string> check = lkdtm ? std::vector<std::string>{"grep", "-qxF", *lkdtm, kLkdtmTrigger}
                                         : std::vector<std::string>{"test", "-c", "/dev/immortal-fault"};
  agent.exec(check, 10'000, [request, &agent, &state, guest, say, cls, lkdtm](const agent::ExecResult* result,
                                                                              const std::string& error) mutable {
    if (!result) return request.fail(kAgent, error);
    if (lkdtm && result->exit_code == 1)
      return request.fail(kUsage, "the guest's LKDTM has no crash type \"" + *lkdtm + "\" (its types: immortal exec " +
                                      guest + " -- cat " + kLkdtmTrigger + ")");
    if (lkdtm && result->exit_code != 0)
      return request.fail(kFailure, std::string("the guest has no LKDTM: ") + kLkdtmTrigger +
                                        " is missing (is the lkdtm module loaded and debugfs mounted?)");
    if (result->exit_code != 0)
      return request.fail(kFailure, "the guest has no fault-injection driver: /dev/immortal-fault is missing "
                                    "(is the immortal_fault module loaded?)");
    std::vector<std::string> argv{"/sbin/immortal-victim", cls};
    std::uint64_t crashes_before = state.crashes();
    agent.spawn(argv, [request, &state, say, cls, argv, crashes_before](int pid, const std::string& spawn_error) mutable {
      if (pid <= 0 && state.crashes() > crashes_before) {
        // The victim ran and crashed the guest before the agent could send its pid (a panic is
        // that quick): the fault was injected; what became of the guest is the crash's business.
        say(fmt::format("injected {}: the guest crashed before its agent reported the victim's pid ({} {})", cls,
                        argv[0], argv[1]));
        return request.reply({{"class", cls}, {"pid", nullptr}, {"crashed_before_pid", true}, {"command", argv}});
      }
      if (pid <= 0) return request.fail(kFailure, "cannot start the victim: " + spawn_error);
      say(fmt::format("injected {}: victim pid {} ({} {})", cls, pid, argv[0], argv[1]));
      request.reply({{"class", cls}, {"pid", pid}, {"command", argv}});
    });
  });
}

// The host's view, independent of the (possibly broken) agent: walked by a sandboxed
// introspection agent, the guest paused meanwhile (a few milliseconds).
void introspect_command(ControlRequest request, LiveIntrospection& introspection) {
  std::string part = request.body().value("part", "");
  if (part != "tasks" && part != "modules" && part != "dmesg")
    return request.fail(kUsage, fmt::format("unknown part \"{}\"", part));
  introspection.start(std::move(request), part);
}

void dump_command(ControlRequest request, Machine& machine) {
  std::string path = request.body().value("path", "");
  if (path.empty() || path[0] != '/') return request.fail(kUsage, "dump needs an absolute file path");
  if (!machine.capabilities().native_dump)
    return request.fail(static_cast<int>(ExitCode::unsupported),
                        fmt::format("the {} backend writes no dump of its own (immortal bundle does)", machine.backend()));
  auto start = Clock::now();
  machine.write_native_dump(path);
  request.reply({{"path", path}, {"seconds", ms_since(start) / 1000}});
}

void unquarantine_command(ControlRequest request, GuestState state, Machine& machine, LiveKernel& live,
                          QuarantineList& quarantine, const EventSink& event) {
  std::vector<std::string> names;
  const json given = request.body().value("functions", json::array());
  if (given.is_array())
    for (const auto& n : given)
      if (n.is_string()) names.push_back(n.get<std::string>());
  bool all = request.body().value("all", false);
  if (names.empty() && !all) return request.fail(kUsage, "name the functions to unquarantine, or --all");
  if (state != GuestState::running)
    return request.fail(kFailure, std::string("the guest is ") + to_string(state) + ", not running");
  Kernel& kernel = live.get();
  auto done = while_paused(machine, [&] { return quarantine.release(machine, kernel, names); });
  event("unquarantine", {{"result", done}});
  request.reply({{"released", done}});
}

// The guest (healthy, hung or misbehaving) is stopped only while its memory is copied.
void bundle_command(ControlRequest request, GuestState state, Machine& machine, LiveKernel& live,
                    CrashBundles& bundles, const EventSink& event) {
  if (state == GuestState::shut_off || state == GuestState::rebooting || state == GuestState::starting)
    return request.fail(kFailure, std::string("the guest is ") + to_string(state) + ": nothing to take a bundle of");
  if (bundles.busy())
    return request.fail(kFailure, "bundles are being written already: ask again when they are (immortal events NAME)");
  try {
    auto paused_at = Clock::now();
    double stop_ms = 0, registers_ms = 0;
    Clock::time_point stopped_at, copied_at;
    BundleCapture capture = while_paused(machine, [&] {
      stopped_at = Clock::now();
      stop_ms = ms_since(paused_at);
      auto asked = Clock::now();
      std::vector<X86Registers> regs;
      for (int v = 0; v < machine.vcpu_count(); ++v) regs.push_back(machine.read_registers(v));
      registers_ms = ms_since(asked);
      auto c = bundles.capture_on_demand(machine, live, std::move(regs));
      copied_at = Clock::now();
      return c;
    });
    // The copy's time, and the whole stop as the guest saw it: from its STOP to its RESUME on the
    // hypervisor's clock (recovery.md, section 9), else from our asking to stop to the answer to
    // our asking to resume.
    double round_trip_ms = ms_since(paused_at), resume_ms = ms_since(copied_at);
    auto guest_paused = hypervisor_downtime_ms(machine.last_stop_time(), paused_at, stopped_at, machine.last_resume_time(), copied_at);
    bool hypervisor_clock = guest_paused.has_value();
    double paused_ms = guest_paused.value_or(round_trip_ms);
    event("bundle-snapshot", {{"reason", "on-demand"}, {"snapshot_pause_ms", capture.pause_ms},
                              {"classify_ms", capture.classify_ms}, {"stop_ms", stop_ms}, {"registers_ms", registers_ms},
                              {"resume_ms", resume_ms}, {"guest_paused_ms", paused_ms},
                              {"timed_by", hypervisor_clock ? "hypervisor" : "supervisor"},
                              {"paused_round_trip_ms", round_trip_ms}});
    bundles.take_now(std::move(capture), machine.memory(), live.profile(), {{"guest_paused_ms", paused_ms}},
                     [request](const BundleResult& r) mutable {
                       if (r.path.empty()) return request.fail(kFailure, r.error);
                       request.reply({{"path", r.path}, {"write_ms", r.write_ms}, {"vmcore_bytes", r.vmcore_bytes}});
                     });
  } catch (const std::exception& e) {
    request.fail(kFailure, std::string("cannot take a bundle: ") + e.what());
  }
}

void dispatch_command(ControlRequest request, CommandTargets& to) {
  std::string command = request.command();
  try {
    if (command == "status") return request.reply(to.status());
    if (command == "metrics") return request.reply({{"exposition", to.metrics()}});
    if (command == "stop") {
      bool shutdown = request.body().value("shutdown", false);
      to.stop(request.body().value("force", false), shutdown);
      return request.reply({{"stopping", true}, {"detaching", !to.machine.capabilities().owns_vm && !shutdown}});
    }
    if (command == "events") return request.reply({{"events", json(to.events.recent())}});
    if (command == "exec") return exec_command(request, to.agent);
    if (command == "inject") return inject_command(request, to.state, to.agent, to.guest, to.say);
    if (command == "introspect") return introspect_command(request, to.introspection);
    if (command == "dump") return dump_command(request, to.machine);
    if (command == "unquarantine")
      return unquarantine_command(request, to.state.get(), to.machine, to.kernel, to.quarantine, to.event);
    if (command == "bundle") return bundle_command(request, to.state.get(), to.machine, to.kernel, to.bundles, to.event);
    if (command == "upgrade") {
      if (!to.state.is(GuestState::running))
        return request.fail(kFailure, std::string("the guest is ") + to_string(to.state.get()) +
                                          ": an upgrade waits until it runs (not in the middle of a crash)");
      return to.upgrade(request);
    }
    request.fail(kUsage, "unknown command \"" + command + "\"");
  } catch (const nlohmann::json::exception& e) {
    // A field of the wrong type: the client's mistake, not a reason for the supervisor to die.
    request.fail(kUsage, std::string("malformed request: ") + e.what());
  } catch (const Error& e) {
    request.fail(e.exit_code(), e.what());
  } catch (const std::exception& e) {
    request.fail(kFailure, e.what());
  }
}

}  // namespace immortal::vmm
