#include "campaign/campaign_runner.h"

#include "base/clock.h"
#include "base/error.h"
#include "campaign/campaign_guest.h"
#include "campaign/campaign_plan.h"
#include "campaign/campaign_progress.h"
#include "campaign/campaign_report.h"
#include "campaign/campaign_results.h"
#include "campaign/fault_inject_scripts.h"
#include "campaign/guest_files.h"
#include "campaign/workload_records.h"
#include "cli/crash_outcome.h"
#include "cli/event_follower.h"
#include "instance.h"

#include <fmt/format.h>

#include <csignal>

#include <atomic>
#include <filesystem>
#include <iostream>
#include <map>
#include <set>
#include <optional>
#include <thread>

namespace immortal::vmm {

using nlohmann::json;

namespace {

std::atomic<bool> interrupted{false};

void on_signal(int) { interrupted = true; }

void catch_interrupts() {
  struct sigaction sa {};
  sa.sa_handler = on_signal;
  sigemptyset(&sa.sa_mask);
  ::sigaction(SIGINT, &sa, nullptr);
  ::sigaction(SIGTERM, &sa, nullptr);
}

class PhaseRun {
 public:
  PhaseRun(const GlobalOptions& g, const CampaignPlan& plan, const CampaignPhase& phase, CampaignResults& results,
           CampaignProgress& progress)
      : plan_(plan),
        phase_(phase),
        results_(results),
        progress_(progress),
        guest_(g, plan, phase, results.dir(), results.dir() + "/campaign.log"),
        acks_(guest_.acks_log()),
        console_(guest_.console_log()),
        root_(runtime_root(g.runtime_dir)) {}

  // Runs the phase's injections not done yet. False when interrupted. The guest is powered off
  // at the end, whatever happens.
  bool run(const std::vector<Injection>& injections) {
    try {
      return run_injections(injections);
    } catch (...) {
      guest_.stop();
      throw;
    }
  }

 private:
  bool run_injections(const std::vector<Injection>& injections) {
    progress_.note(fmt::format("{}: booting guest {} (recovery {})", phase_.name, guest_.name(), phase_.recovery ? "on" : "off"));
    guest_.stop();  // one left running by an interrupted campaign
    guest_.start(/*fresh_disk=*/true);
    follower_.emplace(root_, guest_.name(), /*from_end=*/true);
    after_boot();
    bool complete = true;
    for (const auto& inj : injections) {
      if (results_.done(phase_.name, inj.index)) continue;
      if (interrupted) {
        complete = false;
        break;
      }
      progress_.starting(phase_.name, inj.fault);
      auto r = inject(inj);
      if (!r) {
        complete = false;
        break;
      }
      results_.add(*r);
      progress_.finished(phase_.name, inj.fault, outcome_line(*r));
    }
    guest_.stop();
    return complete;
  }

  static std::string outcome_line(const json& r) {
    std::string line = r.value("outcome", "?");
    if (r.contains("intercept_to_resume_ms")) line += fmt::format(", resumed in {:.0f} ms", r["intercept_to_resume_ms"].get<double>());
    if (r.contains("workload_gap_ms")) line += fmt::format(", workload gap {:.0f} ms", r["workload_gap_ms"].get<double>());
    if (r.value("records_lost", 0) > 0) line += fmt::format(", {} RECORDS LOST", r["records_lost"].get<int>());
    if (!r.value("workload_back", true)) line += ", workload did not come back";
    if (r.contains("reason") && !r["reason"].get<std::string>().empty()) line += " (" + r["reason"].get<std::string>() + ")";
    return line;
  }

  // What every boot of the phase's guest needs: the baseline's panic_on_oops, the plan's setup
  // commands, which fault-injection kinds the kernel has, and the workload.
  void after_boot() {
    if (phase_.panic_on_oops >= 0) guest_.sh(fmt::format("sysctl -q -w kernel.panic_on_oops={}", phase_.panic_on_oops), std::chrono::seconds(30));
    unavailable_.clear();
    auto not_copied = copy_files();
    for (std::size_t i = 0; i < plan_.faults.size(); ++i) {
      const FaultSpec& f = plan_.faults[i];
      for (const auto& file : f.files)
        if (auto it = not_copied.find(file); it != not_copied.end() && !unavailable_.count(static_cast<int>(i)))
          unavailable_[static_cast<int>(i)] = fmt::format("its file {} could not be copied into the guest: {}", file, it->second);
      if (f.setup.empty() || unavailable_.count(static_cast<int>(i))) continue;
      auto r = guest_.sh(f.setup, std::chrono::seconds(120));
      if (!r.ran || r.exit_code != 0)
        unavailable_[static_cast<int>(i)] = fmt::format("its setup failed ({}): {}", r.ran ? fmt::format("exit status {}", r.exit_code) : r.error,
                                                        r.out.substr(0, 200));
    }
    start_workload();
  }

  // The plan's files into this boot of the guest (guest_files.h), each once: host path → why
  // it could not be copied, for those that could not.
  std::map<std::string, std::string> copy_files() {
    std::map<std::string, std::string> failed;
    std::set<std::string> done;
    for (const auto& f : plan_.faults)
      for (const auto& file : f.files) {
        if (!done.insert(file).second) continue;
        std::string bytes;
        try {
          bytes = read_guest_file(file);
        } catch (const std::exception& e) {
          failed[file] = e.what();
          continue;
        }
        std::string name = std::filesystem::path(file).filename().string();
        for (const auto& command : guest_file_commands(kGuestFilesDir, name, bytes)) {
          auto r = guest_.sh(command.script, command.args, std::chrono::seconds(60));
          if (!r.ran || r.exit_code != 0) {
            failed[file] = r.ran ? fmt::format("exit status {}: {}", r.exit_code, r.out.substr(0, 200)) : r.error;
            break;
          }
        }
      }
    return failed;
  }

  void start_workload() {
    if (plan_.record_interval_ms == 0) return;
    acks_.poll();
    std::uint64_t first = acks_.highest() + 1;
    auto r = guest_.sh(start_records_workload(guest_.records_serial(), first, plan_.record_interval_ms), std::chrono::seconds(30));
    if (r.ran && r.exit_code != 0) progress_.note(fmt::format("{}: the workload did not start: {}", phase_.name, r.out));
    if (!wait_for_records(first, std::chrono::seconds(60)))
      progress_.note(fmt::format("{}: no record acknowledged within 60 s of the workload's start", phase_.name));
  }

  bool wait_for_records(std::uint64_t at_least, std::chrono::seconds timeout) {
    if (plan_.record_interval_ms == 0) return true;
    auto deadline = std::chrono::steady_clock::now() + timeout;
    while (std::chrono::steady_clock::now() < deadline) {
      acks_.poll();
      if (acks_.highest() >= at_least) return true;
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    return false;
  }

  // Starts the fault; an error message when it could not be started.
  std::string trigger(const Injection& inj) {
    const FaultSpec& f = plan_.faults[static_cast<std::size_t>(inj.spec)];
    if (auto it = unavailable_.find(inj.spec); it != unavailable_.end()) return it->second;
    switch (inj.source) {
      case FaultSource::driver:
      case FaultSource::lkdtm: return guest_.inject(inj.fault);
      case FaultSource::module: {
        // The agent's answer may never come: the trigger can crash the kernel first. Only a
        // shell that answered and failed is a trigger that did not start; the events say the rest.
        auto r = guest_.sh(fmt::format("setsid sh -c {} </dev/null >/dev/null 2>&1 &", shell_quote(f.trigger)), std::chrono::seconds(30));
        return !r.ran || r.exit_code == 0 ? "" : "the trigger did not start: " + r.out;
      }
      case FaultSource::fault_inject: {
        auto r = guest_.sh(fault_inject_script(f, inj), std::chrono::seconds(30));
        return !r.ran || r.exit_code == 0 ? "" : r.out.substr(0, r.out.find('\n'));
      }
    }
    return "unknown source";
  }

  // One injection, and what became of the guest and its workload. nullopt when interrupted.
  std::optional<json> inject(const Injection& inj) {
    json r = {{"phase", phase_.name}, {"index", inj.index},           {"source", to_string(inj.source)},
              {"type", inj.type},     {"fault", inj.fault},            {"started_at", utc_now()},
              {"guest", guest_.name()}, {"recovery", phase_.recovery}};
    if (phase_.recovery) guest_.unquarantine_all();  // the last crash's quarantine would refuse this fault
    auto start = std::chrono::steady_clock::now();
    auto wall_start = std::chrono::system_clock::now();
    acks_.poll();  // both sources read up to now: a report already sent is not this fault's
    console_.poll();
    std::size_t reports_before = kernel_reports();
    std::string boot = guest_.boot_id();
    std::vector<json> seen;
    if (std::string error = trigger(inj); !error.empty()) {
      r["outcome"] = unavailable_.count(inj.spec) || inj.source == FaultSource::fault_inject ? "unavailable" : "inject-failed";
      r["reason"] = error;
      finish(r, start, wall_start, seen);
      return r;
    }
    // A kernel that reports a fault and goes on (an oops with panic_on_oops=0, a warning without
    // panic_on_warn, a soft lockup without softlockup_panic) sends no crash event. Once the
    // console shows the kernel's report, a few seconds without a crash settle it.
    std::optional<std::chrono::steady_clock::time_point> reported;
    auto stop = [&](bool crash_seen) {
      acks_.poll();  // read as they come: the workload's gap is timed by when the host read them
      console_.poll();
      if (interrupted) return true;
      if (crash_seen) return false;  // its outcome is on its way
      if (kernel_reports() > reports_before && !reported) reported = std::chrono::steady_clock::now();
      return reported && std::chrono::steady_clock::now() - *reported > std::chrono::seconds(5);
    };
    json o = follow_crash_outcome(*follower_, std::chrono::seconds(plan_.outcome_timeout_s), std::chrono::seconds(45), stop, &seen);
    if (interrupted) {
      cleanup(inj);
      return std::nullopt;
    }
    r.update(o);
    std::string outcome = r.value("outcome", "unknown");
    if (outcome == "stopped") outcome = "continued", r["reason"] = last_report();
    if (outcome == "no-crash" && kernel_reports() > reports_before) outcome = "continued", r["reason"] = last_report();
    acks_.poll();
    std::uint64_t acked = acks_.highest();
    if (outcome == "rebooted" || outcome == "kdump") {
      if (!guest_.wait_for_new_boot(boot, std::chrono::seconds(240)))
        restart_guest(r, "the guest did not come back from its reboot within 240 s");
      else
        after_boot();
    } else if (outcome == "instance-ended" || outcome == "unknown") {
      restart_guest(r, outcome == "unknown" ? "no outcome within the time limit" : "its supervisor ended");
    } else if (auto alive = guest_.sh("true", std::chrono::seconds(20)); !alive.ran) {
      // The guest went on but its agent cannot run a command: hung (typically a stock kernel
      // after an oops that left a lock held). The campaign restarts it for the next fault.
      outcome = "hung";
      r["reason"] = "the guest's agent could not run a command: " + alive.error;
      restart_guest(r, "hung");
    }
    const FaultSpec& spec = plan_.faults[static_cast<std::size_t>(inj.spec)];
    if ((outcome == "recovered" || outcome == "continued" || outcome == "no-crash") && !spec.probe.empty()) {
      // A crash that left the driver's lock held shows when the driver is used next.
      if (auto p = guest_.sh(spec.probe, std::chrono::seconds(10)); !p.ran) {
        r["probe"] = "hung: " + p.error;
        r["reason"] = "the device hung afterwards: its probe (" + spec.probe + ") did not finish within 10 s";
        outcome = "device-hung";
        restart_guest(r, "device hung");
      } else {
        r["probe"] = p.exit_code == 0 ? "ok" : fmt::format("failed (exit status {})", p.exit_code);
      }
    }
    r["outcome"] = outcome;
    cleanup(inj);
    bool back = wait_for_records(acked + 1, std::chrono::seconds(30));
    if (plan_.record_interval_ms > 0) r["workload_back"] = back;
    finish(r, start, wall_start, seen);
    return r;
  }

  // The kernel's reports of trouble, from the serial console's log (when the host has one) and
  // from the kernel's log as the workload forwards it on its port: either is enough.
  std::size_t kernel_reports() const { return console_.kernel_reports() + acks_.kernel_reports(); }
  std::string last_report() const {
    return console_.last_report().empty() ? acks_.last_report() : console_.last_report();
  }

  // A new boot of the phase's guest (powered off, started on the same records disk), said in
  // the result, with what every boot needs.
  void restart_guest(json& r, const std::string& why) {
    r["guest_restarted"] = why;
    guest_.restart();
    after_boot();
  }

  void cleanup(const Injection& inj) {
    if (inj.source == FaultSource::fault_inject) guest_.sh(fault_inject_cleanup(inj), std::chrono::seconds(20));
  }

  void finish(json& r, std::chrono::steady_clock::time_point start, std::chrono::system_clock::time_point wall_start,
              const std::vector<json>& seen) {
    // Bundles are written in the background: the crash's may come a little after its outcome.
    std::uint64_t crash = r.value("crash", std::uint64_t{0});
    auto find_bundle = [&](const std::vector<json>& events) {
      for (const auto& e : events)
        if (e.value("event", "") == "bundle" && e.value("crash", std::uint64_t{0}) == crash && e.contains("path")) r["bundle"] = e["path"];
    };
    find_bundle(seen);
    for (int i = 0; crash && !r.contains("bundle") && i < 40 && follower_; ++i) find_bundle(follower_->next(std::chrono::milliseconds(250)));
    if (plan_.record_interval_ms > 0) {
      acks_.poll();
      r["records_acked"] = acks_.highest();
      RecordCheck c = check_records(guest_.disk(), 1, acks_.highest());
      r["records_lost"] = c.lost;
      if (c.lost) r["lost_examples"] = c.examples;
      if (auto gap = acks_.longest_gap_ms(wall_start)) r["workload_gap_ms"] = *gap;
    }
    r["duration_ms"] = ms_since(start);
  }

  const CampaignPlan& plan_;
  const CampaignPhase& phase_;
  CampaignResults& results_;
  CampaignProgress& progress_;
  CampaignGuest guest_;
  GuestOutputWatch acks_;     // the workload's acknowledgements
  GuestOutputWatch console_;  // the kernel's reports
  std::string root_;
  std::optional<EventFollower> follower_;
  std::map<int, std::string> unavailable_;  // [[faults]] tables whose setup failed in this boot
};

}  // namespace

int run_campaign(const GlobalOptions& g, const CampaignPlan& plan, const CampaignOptions& options) {
  CampaignResults results(options.out_dir, plan, options.restart);
  if (results.skipped_lines())
    std::cerr << fmt::format("immortal: {} unreadable line(s) in {}/results.jsonl: those injections run again\n",
                             results.skipped_lines(), options.out_dir);
  auto phases = campaign_phases(plan);
  int total = 0, done = 0;
  for (const auto& p : phases)
    for (const auto& inj : phase_injections(plan, p)) {
      ++total;
      done += results.done(p.name, inj.index);
    }
  if (done) std::cerr << fmt::format("immortal: resuming campaign {}: {} of {} injections done\n", plan.name, done, total);
  catch_interrupts();
  CampaignProgress progress(total, done);
  bool complete = true;
  for (const auto& p : phases) {
    auto injections = phase_injections(plan, p);
    bool left = false;
    for (const auto& inj : injections) left = left || !results.done(p.name, inj.index);
    if (!left) continue;
    PhaseRun run(g, plan, p, results, progress);
    if (!run.run(injections)) {
      complete = false;
      break;
    }
  }
  progress.end();
  CampaignReport report(results);
  report.write_html(options.out_dir + "/report.html");
  std::cout << report.summary_table();
  std::cout << fmt::format("\nresults: {0}/results.jsonl\nreport:  {0}/report.html\n", options.out_dir);
  if (!complete) {
    std::cerr << fmt::format("immortal: campaign {} interrupted: {} of {} injections done; the same command resumes it\n",
                             plan.name, results.all().size(), total);
    return 130;
  }
  if (report.records_lost_in_recoveries() > 0) {
    std::cerr << fmt::format("immortal: campaign {} FAILED: {} acknowledged record(s) lost in recovered injections (see the report)\n",
                             plan.name, report.records_lost_in_recoveries());
    return static_cast<int>(ExitCode::failure);
  }
  return 0;
}

}  // namespace immortal::vmm
