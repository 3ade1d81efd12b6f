#include "recovery/recovery_coordinator.h"

#include "base/clock.h"
#include "base/error.h"
#include "engine/crash_analysis.h"
#include "engine/text_precheck.h"
#include "kernel/symbols.h"
#include "recovery/crash_decision.h"

#include <fmt/format.h>

#include <cstring>
#include <filesystem>
#include <future>
#include <fstream>
#include <map>

namespace immortal::vmm {

namespace {
// After a guest panic, time for its panic() to flush the console before we freeze the VM (it
// would only spin in panic's delay loop from then on).
constexpr auto kCrashConsoleGrace = std::chrono::milliseconds(1000);
}  // namespace

RecoveryCoordinator::RecoveryCoordinator(RecoveryParts parts)
    : p_(std::move(parts)),
      interceptor_(p_.machine),
      arming_(p_.machine, interceptor_, p_.kernel, p_.profiles, p_.repair, p_.bundles, p_.quarantine, p_.event, p_.say,
              p_.report_ready),
      budget_(p_.policy),
      reboots_(p_, interceptor_, arming_) {}

void RecoveryCoordinator::on_event(const MachineEvent& e) {
  switch (e.kind) {
    case MachineEvent::Kind::guest_panicked: return on_panic_event();
    case MachineEvent::Kind::breakpoint: return on_breakpoint(e.vcpu);
    case MachineEvent::Kind::reset: return reboots_.on_reset(e.detail);
    // Time paused is no time without heartbeats: the hang clock starts again at every resume.
    case MachineEvent::Kind::resumed: resumed_at_ = Clock::now(); return;
    default: return;
  }
}

void RecoveryCoordinator::tick() {
  if (freeze_at_ && Clock::now() >= *freeze_at_) freeze_crashed();
  reboots_.tick();
  if (p_.state.is(GuestState::running) && p_.agent.hello()) arming_.follow(p_.policy.enabled, p_.agent.hello()->boot_id);
  if (p_.state.is(GuestState::recovering)) watch_recovery();
  if (p_.state.is(GuestState::running)) check_hang();
  if (p_.state.is(GuestState::hung) && p_.agent.last_heard() &&
      Clock::now() - *p_.agent.last_heard() < std::chrono::seconds(2)) {
    p_.state.change(GuestState::running, "the agent answers again");  // recovery off
    p_.event("hang-over", {});
  }
}

// ---- Crashes caught ------------------------------------------------------------------------

void RecoveryCoordinator::on_panic_event() {
  if (p_.state.is(GuestState::rebooting)) return reboots_.boot_failed("the guest kernel crashed while booting (pvpanic)");
  p_.state.change(GuestState::crashed, "pvpanic");
  freeze_at_ = Clock::now() + kCrashConsoleGrace;
  std::uint64_t id = p_.ledger.open_crash();
  p_.event("crash", {{"crash", id}, {"caught_at", utc_now()}, {"caught_by", "pvpanic"},
                     {"summary", "a kernel panic reported by the guest (pvpanic): not caught at its first instruction"}});
  bool reboot = p_.policy.enabled || p_.policy.reboot_when_off;
  p_.ledger.record({id, utc_now(), "a kernel panic reported by the guest (pvpanic)", reboot ? "reboot" : "freeze",
                    "not caught at its first instruction", "", "", ""});
  if (reboot) reboot_after_freeze_ = id;
  p_.say(p_.policy.enabled ? "the guest kernel crashed (pvpanic) past the point where it can be resumed; it will be rebooted"
         : reboot          ? "the guest kernel crashed (pvpanic); recovery is off; it will be rebooted after its bundle (--on-crash reboot)"
                           : "the guest kernel crashed (pvpanic); recovery is off; the VM will be frozen with its state kept.");
}

void RecoveryCoordinator::freeze_crashed() {
  freeze_at_.reset();
  try {
    p_.machine.pause();
    p_.say("the crashed guest is frozen; last console lines:\n" + p_.console_tail(15));
    // The dump of a crash caught only by pvpanic: panic() has run, so panic_cpu says which CPU.
    auto record = interceptor_.record(p_.ledger.crashes(), -1, "pvpanic", "");
    json analysis;
    try {
      Kernel& kernel = p_.kernel.get();
      int cpu = kernel.memory().read_value<std::int32_t>(kernel.symbol("panic_cpu"));
      record.vcpu = cpu >= 0 && cpu < static_cast<int>(record.registers.size()) ? cpu : -1;
      if (record.vcpu >= 0 && p_.repair) {
        RepairAnswer answer = ask_repair_engine(record);
        if (answer.ok) analysis = answer.analysis;
      }
      // Recovery off: no repair engine runs; the bundle's report agent analyses the crash from
      // the bundle's snapshot (nothing of it is parsed here).
    } catch (const std::exception&) {
      // No analysis: the bundle still holds the memory and every vCPU's registers.
    }
    bool reboot_it = reboot_after_freeze_.has_value();
    p_.bundles.hold(record, p_.bundles.capture(p_.machine, p_.kernel, record.registers, record.vcpu), p_.kernel.profile(),
                    analysis, json(), reboot_it ? "reboot" : "none",
                    reboot_it ? (p_.policy.enabled ? "caught by pvpanic only: past the point where it can be resumed"
                                                   : "recovery is off: rebooted (--on-crash reboot)")
                              : "recovery is off: the guest is left frozen");
    if (!reboot_it) {
      p_.bundles.finish("frozen");
      // A frozen guest answers nothing more: whoever waits on its agent learns it now.
      p_.agent.abandon("the guest kernel crashed and is frozen (recovery is off)");
    }
  } catch (const Error& e) {
    p_.say(std::string("cannot pause the crashed guest: ") + e.what());
    return;
  }
  if (reboot_after_freeze_) {
    auto crash = *reboot_after_freeze_;
    reboot_after_freeze_.reset();
    reboot(p_.policy.enabled ? "the crash was not caught at its first instruction (pvpanic only): it cannot be resumed"
                             : "recovery is off: rebooted as the stock kernel would (--on-crash reboot)",
           crash);
  }
}

void RecoveryCoordinator::on_breakpoint(int vcpu) {
  auto stopped_at = Clock::now();
  std::optional<std::string> point;
  try {
    if (vcpu >= 0) point = interceptor_.point_at(p_.machine.read_registers(vcpu).rip);
  } catch (const Error&) {
  }
  if (!point) {
    // Not ours (or a vCPU we cannot read): never leave the guest stopped for it.
    p_.say(fmt::format("an unexpected debug stop on vCPU {}: resuming", vcpu));
    p_.machine.resume();
    return;
  }
  if (*point == "crash_kexec") {
    // An oops about to hand the guest to its kdump kernel (crash_kexec() runs before panic()
    // when a crash kernel is loaded, and on every oops with panic_on_oops). Return from it as if
    // no crash kernel were loaded: oops_end() goes on to panic(), where the crash is caught as
    // any other. If that crash cannot be recovered, the guest's kdump still gets it.
    try {
      interceptor_.return_from_call(vcpu, p_.kernel.get());
      p_.machine.resume();
      return;
    } catch (const std::exception& e) {
      p_.say(std::string("cannot step over crash_kexec: ") + e.what());
    }
  }
  on_crash(interceptor_.record(p_.ledger.open_crash(), vcpu, "breakpoint", *point), stopped_at);
}

void RecoveryCoordinator::on_crash(repair::CrashRecord record, Clock::time_point stopped_at) {
  CrashTimes times{stopped_at, ms_since(stopped_at)};
  if (watch_) cut_watch_short(record.id);
  p_.state.change(GuestState::crashed, "a crash caught at its first instruction");
  // The bundle's copy of memory is taken while the repair engine works: the guest is stopped for
  // both and nothing is changed before the decision, so the copy no longer adds to the pause. The
  // copy reads guest RAM and asks the page-class agent; the engine is another process or VM.
  // Pages of the kernel's code the precheck finds unchanged are the healthy copy's bytes: the
  // copy takes them from it after the guest resumes (fill_known), not from guest RAM in the pause.
  auto precheck_done = std::make_shared<std::promise<std::optional<repair::TextPrecheck>>>();
  std::shared_future<std::optional<repair::TextPrecheck>> precheck = precheck_done->get_future().share();
  // The code's pages were found once, when the repair image was built (Arming).
  const std::vector<repair::WholeCodePage>& pages = p_.bundles.code_pages();
  // A repair VM that reads the crash from its snapshot (in the host pool's arena, which it sees
  // as a window) is asked once the copy is done: the copy goes first, on two threads, beside the
  // precheck. Otherwise the copy runs beside the analysis: beside the repair VM's (tens of ms,
  // both its vCPUs busy) on one thread; beside the inline engine's few ms it is the longest part
  // of the pause, and takes two.
  const bool snapshot_first = p_.repair && p_.repair->reads_snapshots();
  const bool long_analysis = !snapshot_first && (!p_.repair || p_.repair->mode() != "inline");
  auto capture = std::async(std::launch::async, [&, precheck] {
    KnownPages code;
    if (!pages.empty()) {
      for (const auto& page : pages) code.pages.push_back(page.physical);
      code.known = [&pages, precheck]() -> std::vector<KnownPages::Known> {
        // Made beside this copy on the same stopped guest; bounded, should the engine's side fail.
        if (precheck.wait_for(std::chrono::seconds(1)) != std::future_status::ready) return {};
        std::optional<repair::TextPrecheck> found;
        try {
          found = precheck.get();
        } catch (const std::future_error&) {
        }
        if (!found) return {};
        std::vector<KnownPages::Known> out;
        std::vector<bool> unchanged = repair::unchanged_code(pages, *found);
        for (std::size_t i = 0; i < pages.size(); ++i)
          out.push_back(!unchanged[i] ? KnownPages::Known::no : pages[i].zeros ? KnownPages::Known::zeros : KnownPages::Known::bytes);
        return out;
      };
      // After the resume (fill_known), in page order: a reader per region unpacks each frame once.
      auto readers = std::make_shared<std::map<const repair::HealthyRegion*, repair::RegionReader>>();
      code.copy = [&pages, readers](std::size_t i, std::byte* page) {
        const auto& p = pages.at(i);
        auto reader = readers->try_emplace(p.region, *p.region).first;
        std::memcpy(page, reader->second.at(p.offset, 4096), 4096);
      };
    }
    return p_.bundles.capture(p_.machine, p_.kernel, record.registers, record.vcpu, pages.empty() ? nullptr : &code,
                              /*beside_repair=*/long_analysis);
  });
  std::optional<BundleCapture> taken;
  auto attach_snapshot = [&](repair::RepairRequest& request) {
    auto t_wait = Clock::now();
    taken = capture.get();
    times.snapshot_wait_ms = ms_since(t_wait);
    const MemorySnapshot* copy = taken->memory.get();
    // Only a copy in the pool's arenas, which the VM sees; one in memory of its own (every arena
    // busy) leaves the VM to read the guest's RAM, as before.
    if (!copy || copy->pool_slot() < 0) return;
    request.snapshot_index = copy->index();
    request.snapshot = repair::SnapshotRef{copy->pool_slot(), copy->pages_bytes(), request.snapshot_index.size()};
  };
  auto t_ask = Clock::now();
  RepairAnswer answer = ask_repair_engine(record, precheck_done.get(), snapshot_first ? AttachSnapshot(attach_snapshot) : nullptr);
  times.ask_ms = ms_since(t_ask);
  if (!taken) {
    auto t_wait = Clock::now();
    taken = capture.get();
    times.snapshot_wait_ms = ms_since(t_wait);
  }
  BundleCapture captured = std::move(*taken);
  auto t_decide = Clock::now();
  CrashDecision d = decide_on_crash(answer, record, p_.policy, budget_, p_.kernel, p_.repair ? p_.repair->healthy() : nullptr);
  times.decide_ms = ms_since(t_decide);
  const repair::RepairPlan& plan = d.plan;
  json analysis = d.analysed ? answer.analysis : json(), plan_json = plan.to_json();
  times.analysis_ms = ms_since(stopped_at);
  // What is written about the crash (the bundle held, the ledger, the events, the crash file)
  // changes nothing the repair does: for a resume it is written once the guest runs again.
  auto write_down = [&] {  // called once
    p_.bundles.hold(record, std::move(captured), p_.kernel.profile(), analysis, plan_json, plan.resume ? "resume" : "reboot",
                    plan.reason);
    p_.ledger.record({record.id, record.time, d.summary, plan.resume ? "resume" : "reboot", plan.reason, "", "", ""});
    p_.event("crash", {{"crash", record.id}, {"caught_at", record.time}, {"caught_by", record.caught_by},
                       {"at", record.intercepted_at}, {"vcpu", record.vcpu}, {"summary", d.summary},
                       {"analysis", analysis}, {"repair", answer.to_json()}});
    p_.event("plan", {{"crash", record.id}, {"plan", plan_json}});
    p_.say(fmt::format("crash {} caught at {} on vCPU {}: {}", record.id, record.intercepted_at, record.vcpu, d.summary));
    save_crash(record, analysis, plan_json);
  };
  if (plan.resume) return resume_repaired(record, plan, answer, times, write_down);
  write_down();
  p_.bundles.fill_known();  // the healthy copy is still this profile's
  if (record.intercepted_at == "panic" && reboots_.guest_has_kdump()) {
    watch_.reset();
    freeze_at_.reset();
    return reboots_.hand_to_guest_kdump(plan.reason, record.id);
  }
  return reboot(plan.reason, record.id);
}

void RecoveryCoordinator::resume_repaired(const repair::CrashRecord& record, const repair::RepairPlan& plan,
                                          const RepairAnswer& answer, const CrashTimes& times,
                                          const std::function<void()>& write_down) {
  auto t_apply = Clock::now();
  // The guest's downtime is from its stop to its resume on the hypervisor's clock: the answer
  // to the resume reaches us once the resumed guest's vCPU threads let us have a core (on two
  // cores, 1–14 ms later here). Our own times when it has none that fit around ours.
  auto guest_stopped = p_.machine.last_stop_time();  // asked now: a call in the plan stops it again
  std::optional<double> guest_down_ms;
  double resume_ms = 0;
  try {
    interceptor_.apply(plan, p_.kernel.get());
    auto t_resume = Clock::now();
    p_.machine.resume();
    resume_ms = ms_since(t_resume);
    guest_down_ms = hypervisor_downtime_ms(guest_stopped, times.stopped_at - std::chrono::seconds(2), times.stopped_at,
                                           p_.machine.last_resume_time(), t_resume);
  } catch (const std::exception& e) {
    write_down();
    p_.bundles.fill_known();
    return reboot(std::string("applying the repair failed: ") + e.what(), record.id);
  }
  double apply_ms = ms_since(t_apply), noticed_total_ms = ms_since(times.stopped_at);
  bool hypervisor_clock = guest_down_ms.has_value();
  double total_ms = guest_down_ms.value_or(noticed_total_ms);
  // The guest runs: now what is written about its crash (the bundle's copy was taken during the
  // analysis).
  auto t_write = Clock::now();
  write_down();
  double bookkeeping_ms = ms_since(t_write);
  // The guest runs: the bundle's unchanged code pages come from the healthy copy now, before
  // anything (a new profile) can change what that copy holds.
  p_.bundles.fill_known();
  budget_.spend(Clock::now());
  p_.quarantine.add(plan, record.id, record.time);
  p_.state.change(GuestState::recovering, "repaired and resumed");
  std::unique_ptr<RecoveryVerifier> memory_checks;
  if (p_.policy.verify_window.count() > 0) {
    // What the repair killed, for the check that it is gone and nobody waits on its locks.
    std::uint64_t killed = 0;
    int killed_pid = -1;
    for (const auto& a : plan.actions)
      if (a.kind == "kill-task") {
        killed = answer.facts.task;
        killed_pid = answer.facts.task_pid;
      } else if (a.kind == "kill-sleeping-task" && !killed) {
        killed = repair::parse_hex(a.detail.value("task", json("0x0")), "task");
        killed_pid = a.detail.value("pid", -1);
      }
    try {
      memory_checks = std::make_unique<RecoveryVerifier>(p_.kernel.get(), killed, killed_pid, p_.policy.verify_window);
    } catch (const std::exception& e) {
      p_.say(std::string("the recovered guest cannot be watched from its memory: ") + e.what());
    }
  }
  watch_ = std::make_unique<RecoveryWatch>(record.id, p_.policy.verify_timeout, p_.agent.heartbeats(), std::move(memory_checks));
  double snapshot_ms = p_.bundles.pending_snapshot_ms();
  p_.bundles.add_timings({{"record_ms", times.record_ms}, {"analysis_ms", times.analysis_ms}, {"apply_ms", apply_ms},
                          {"intercept_to_resume_ms", total_ms},
                          {"repair_mode", answer.mode}, {"engine_ms", answer.engine_ms},
                          {"repair_round_trip_ms", answer.round_trip_ms}, {"snapshot_pause_ms", snapshot_ms}});
  p_.event("resumed", {{"crash", record.id}, {"actions", plan.reason}, {"record_ms", times.record_ms},
                       {"analysis_ms", times.analysis_ms}, {"apply_ms", apply_ms}, {"resume_ms", resume_ms},
                       {"repair_mode", answer.mode}, {"engine_ms", answer.engine_ms}, {"lock_search_ms", answer.lock_search_ms},
                       {"engine_stage_ms", answer.stage_ms}, {"round_trip_ms", answer.round_trip_ms},
                       {"precheck_ms", answer.precheck_ms}, {"snapshot_wait_ms", times.snapshot_wait_ms},
                       {"ask_ms", times.ask_ms}, {"decide_ms", times.decide_ms},
                       {"snapshot_ms", snapshot_ms}, {"bookkeeping_ms", bookkeeping_ms},
                       {"intercept_to_resume_ms", total_ms}, {"timed_by", hypervisor_clock ? "hypervisor" : "supervisor"},
                       {"noticed_to_answered_ms", noticed_total_ms}});
  p_.say(fmt::format("crash {}: repaired ({}) and resumed {:.1f} ms after interception; verifying", record.id, plan.reason,
                     total_ms));
}

RepairAnswer RecoveryCoordinator::ask_repair_engine(const repair::CrashRecord& record,
                                                    std::promise<std::optional<repair::TextPrecheck>>* precheck_done,
                                                    const AttachSnapshot& attach) {
  RepairAnswer answer;
  if (!p_.repair) {
    if (precheck_done) precheck_done->set_value(std::nullopt);
    answer.error = "no repair engine (recovery is off)";
    return answer;
  }
  repair::RepairRequest request;
  request.record = record;
  request.quarantine_driver = p_.policy.quarantine_driver;
  for (const auto& q : p_.quarantine.entries()) request.known_patches.push_back({q.address, q.patch});
  // The kernel's code compared where it lay when healthy, here at the host's speed: the engine
  // then reads only what differs (engine/text_precheck.h). Without it, it compares everything.
  auto t_precheck = Clock::now();
  try {
    if (const auto* healthy = p_.repair->healthy())
      request.text_precheck = repair::precheck_text(*healthy, p_.kernel.get().memory().physical());
  } catch (const std::exception& e) {
    p_.say(std::string("the code precheck failed (the repair engine compares all of it): ") + e.what());
  }
  if (precheck_done) precheck_done->set_value(request.text_precheck);
  double precheck_ms = ms_since(t_precheck);
  if (attach) attach(request);
  answer = p_.repair->analyse(request);
  answer.precheck_ms = precheck_ms;
  for (const auto& f : answer.fallbacks) p_.say("repair engine fallback: " + f);
  if (answer.cross_check.is_object() && answer.cross_check.value("identical", json()) == json(false))
    p_.event("repair-mismatch", {{"crash", record.id}, {"mode", answer.mode}, {"other", answer.cross_check}});
  return answer;
}

void RecoveryCoordinator::save_crash(const repair::CrashRecord& record, const json& analysis, const json& plan) {
  std::error_code ec;
  std::filesystem::create_directories(p_.crash_dir, ec);
  std::ofstream out(fmt::format("{}/crash-{}.json", p_.crash_dir, record.id), std::ios::trunc);
  out << json{{"record", repair::to_json(record)}, {"analysis", analysis}, {"plan", plan}}.dump(
             2, ' ', false, json::error_handler_t::replace)
      << "\n";
}

bool RecoveryCoordinator::take_over(std::map<std::uint64_t, std::string> armed_points) {
  interceptor_.adopt(std::move(armed_points));
  for (int v = 0; v < p_.machine.vcpu_count(); ++v) {
    auto point = interceptor_.point_at(p_.machine.read_registers(v).rip);
    if (!point) continue;  // crash_kexec too: an oops on its way to panic()
    // Frozen at the crash path's first instruction since then: what the repair needs (the repair
    // image, the analysis of this boot) was not kept, so the safe way out is a bundle and a reboot.
    auto record = interceptor_.record(p_.ledger.open_crash(), v, "breakpoint (no supervisor attached)", *point);
    std::string why = fmt::format("the guest crashed at {} while no supervisor was attached; it was kept frozen "
                                  "until now and is rebooted", *point);
    p_.state.change(GuestState::crashed, "found stopped at an interception point when attaching");
    p_.ledger.record({record.id, record.time, "crash while no supervisor was attached", "reboot", why, "", "", ""});
    p_.event("crash", {{"crash", record.id}, {"caught_at", record.time}, {"caught_by", record.caught_by},
                       {"at", *point}, {"vcpu", v}, {"summary", why}});
    save_crash(record, json(), {{"resume", false}, {"reason", why}});
    p_.bundles.hold(record, p_.bundles.capture(p_.machine, p_.kernel, record.registers, v), p_.kernel.profile(), json(),
                    json(), "reboot", why);
    reboot(why, record.id);
    return true;
  }
  return false;
}

// ---- After the resume ----------------------------------------------------------------------

void RecoveryCoordinator::watch_recovery() {
  WatchVerdict v = watch_->step(p_.agent, p_.kernel, p_.say);
  if (v.kind == WatchVerdict::Kind::failed) return fail_recovery(v.check, v.detail);
  if (v.kind != WatchVerdict::Kind::verified) return;
  std::uint64_t id = watch_->crash();
  watch_.reset();
  p_.ledger.count_recovery();
  p_.event("recovered", {{"crash", id}, {"verify_ms", v.agent_ms}, {"window_ms", v.window_ms}, {"checks", v.checks}});
  p_.say(fmt::format("crash {}: the guest is healthy again (heartbeat and a new process within {:.0f} ms; "
                     "watched for {:.1f} s)", id, v.agent_ms, v.window_ms / 1000));
  p_.ledger.set_outcome(id, "recovered");
  p_.state.change(GuestState::running, "the recovery was verified");
  p_.bundles.finish("recovered", {{"verify_ms", static_cast<std::uint64_t>(v.agent_ms)}, {"window_ms", v.window_ms}});
}

void RecoveryCoordinator::fail_recovery(const std::string& check, const std::string& why) {
  auto id = watch_->crash();
  watch_.reset();
  p_.event("recovery-failed", {{"crash", id}, {"check", check}, {"reason", why}});
  p_.say(fmt::format("crash {}: the recovered guest failed the {} check: {}", id, check, why));
  p_.ledger.set_outcome(id, "recovery failed", check);
  p_.bundles.add_recovery_note("verification", check + ": " + why);
  reboot("the recovery did not hold (" + check + "): " + why, id);
}

void RecoveryCoordinator::cut_watch_short(std::uint64_t new_crash) {
  auto id = watch_->crash();
  bool proven = watch_->agent_proved();
  double ms = watch_->since_resume_ms();
  watch_.reset();
  std::string note = fmt::format("crash {} came {:.1f} s into the watch window", new_crash, ms / 1000);
  if (proven) {
    p_.ledger.count_recovery();
    p_.event("recovered", {{"crash", id}, {"window_ms", ms}, {"note", note + ": the checks up to then passed"}});
    p_.bundles.finish("recovered (watch cut short by a new crash)");
  } else {
    p_.event("recovery-failed", {{"crash", id}, {"check", "agent"}, {"reason", note + " before the agent answered"}});
    p_.bundles.finish("recovery failed: a new crash came first");
  }
}

void RecoveryCoordinator::check_hang() {
  if (!p_.agent.last_heard() || p_.agent.closed()) return;
  // The clock runs from the last heartbeat or the last resume, whichever came later: time the VM
  // was stopped is no time without heartbeats. The hypervisor's own record of the last resume
  // counts too: QEMU stops the guest for a dump-guest-memory the supervisor waited on (half a
  // minute at 8 GiB), and its RESUME event is only read after this turn (the guest was rebooted
  // as hung right after such a dump before).
  auto since = std::max(*p_.agent.last_heard(), resumed_at_);
  if (auto resumed = p_.machine.last_resume_time()) since = std::max(since, *resumed);
  if (Clock::now() - since < p_.policy.hang_timeout) return;
  std::uint64_t id = p_.ledger.open_crash();
  std::string why = fmt::format("no heartbeat from the guest agent for {} s", p_.policy.hang_timeout.count() / 1000);
  if (!p_.policy.enabled) {
    p_.event("hang", {{"crash", id}, {"reason", why}, {"action", "none (recovery is off)"}});
    p_.say("the guest seems hung: " + why + " (recovery is off: left alone)");
    p_.state.change(GuestState::hung, "no heartbeat, recovery off");
    return;
  }
  inspect_and_reboot_hung(id, why);
}

void RecoveryCoordinator::declare_hang(const std::string& why) { inspect_and_reboot_hung(p_.ledger.open_crash(), why); }

void RecoveryCoordinator::inspect_and_reboot_hung(std::uint64_t id, const std::string& why) {
  try {
    p_.machine.pause();
    auto record = interceptor_.record(id, -1, "hang", "");
    // Where each vCPU is, named from the profile's symbols alone: the stacks of a guest that
    // stopped answering are walked by the report agent over the bundle's copy (report.json →
    // cpus), never here.
    json where = json::array();
    const SymbolTable* symbols = nullptr;
    try {
      symbols = &p_.kernel.get().symbols();
    } catch (const Error&) {
    }
    for (const auto& r : record.registers)
      where.push_back(symbols ? symbols->describe(r.rip) : fmt::format("{:#x}", r.rip));
    p_.event("hang", {{"crash", id}, {"reason", why}, {"cpus", where}, {"backtraces", "in the bundle"}});
    p_.ledger.record({id, record.time, "the guest hung: " + why, "reboot", why, "", "", ""});
    json analysis = {{"kind", "hang"}, {"cpus", where}};
    save_crash(record, analysis, {{"resume", false}, {"reason", why}});
    p_.bundles.hold(record, p_.bundles.capture(p_.machine, p_.kernel, record.registers, -1), p_.kernel.profile(), analysis,
                    json(), "reboot", why);
  } catch (const Error& e) {
    p_.say(std::string("cannot inspect the hung guest: ") + e.what());
  }
  reboot(why, id);
}

void RecoveryCoordinator::reboot(const std::string& reason, std::uint64_t crash) {
  watch_.reset();
  freeze_at_.reset();
  reboots_.reboot(reason, crash);
}

nlohmann::json RecoveryCoordinator::status() const {
  json kinds = json::array();
  for (const auto& k : RecoveryPolicy::recoverable_kinds())
    if (!p_.policy.disabled_kinds.count(k)) kinds.push_back(k);
  json pinned = json::array();
  for (const auto& pin : p_.quarantine.pins()) pinned.push_back(pin.module);
  return {{"armed", interceptor_.armed()},
          {"interception", interceptor_.points()},
          {"kinds", kinds},
          {"limit", fmt::format("{}/{}s", p_.policy.max_recoveries, p_.policy.window.count())},
          {"crashes", p_.ledger.crashes()},
          {"recovered", p_.ledger.recoveries()},
          {"reboots", p_.ledger.reboots()},
          {"quarantined", p_.quarantine.to_json()},
          {"pinned", pinned},
          {"quarantine_mode", p_.policy.quarantine_driver ? "driver" : "function"},
          {"verify_window_s", p_.policy.verify_window.count() / 1000}};
}

std::optional<nlohmann::json> RecoveryCoordinator::verification() const {
  if (!watch_) return std::nullopt;
  return watch_->progress();
}

}  // namespace immortal::vmm
