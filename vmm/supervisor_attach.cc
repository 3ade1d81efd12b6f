// The supervisor, continued: what outlives it. Taking over a VM an earlier supervisor left
// running (attach, a run after a SIGKILL, the new side of an upgrade), keeping state.json up to
// date for the next one, and handing the instance to another binary (the old side of an upgrade,
// with its rollback). docs/operator-guide.md, "Restarts and upgrades".
#include "supervisor.h"

#include "base/error.h"
#include "upgrade.h"

#include <unistd.h>

#include <algorithm>
#include <filesystem>

namespace immortal::vmm {

// The VM an earlier supervisor started runs on (or stopped at a crash while nobody watched):
// take it and what that supervisor knew, then go on as if we had booted it.
void Supervisor::take_over(const InstanceState& saved) {
  options_.say(saved.supervisor_pid > 0
                   ? fmt::format("attaching to guest \"{}\" ({} VM, left by supervisor pid {})", saved.machine.name,
                                 backend_.name, saved.supervisor_pid)
                   : fmt::format("attaching to guest \"{}\" ({} VM)", saved.machine.name, backend_.name));
  machine_ = backend_.attach(saved.machine, saved.vm, Deadline::in(kLaunchTimeout));
  build_rooms();
  started_ = Clock::now();
  ledger_.restore(saved.crashes, saved.recoveries, saved.reboots, saved.last_crash);
  quarantine_.load();
  events_.reload(dir_.file("events.jsonl"));
  try {
    auto profile = std::make_shared<const PackedProfile>(GuestProfile::load(dir_.file("profile")));
    if (profile->head().boot_id == saved.boot_id) profile_->adopt(std::move(profile), 0);
  } catch (const std::exception& e) {
    options_.say(std::string("the saved profile cannot be used (a new one is taken): ") + e.what());
  }
  auto before = machine_->state_before_attach();
  event("attached", {{"previous_supervisor_pid", saved.supervisor_pid}, {"vm_pid", machine_->process_id()},
                     {"vm_was", before ? to_string(*before) : "?"}, {"boot_id", saved.boot_id}});
  std::map<std::uint64_t, std::string> armed;
  for (const auto& p : saved.armed) armed[p.address] = p.symbol;
  if (state_.is(GuestState::starting)) state_.change(GuestState::booting, "attached to a running VM");
  if (!recovery_->take_over(std::move(armed)) && before != RunState::shutdown) machine_->resume();
  wait_for_hello(true);
}

void Supervisor::persist() {
  if (!machine_ || released_ || !machine_->capabilities().attach) return;
  InstanceState s;
  s.settings = options_.settings;
  s.backend = backend_.name;
  s.machine = options_.machine;
  s.vm = machine_->attach_handle();
  s.supervisor_pid = ::getpid();
  s.boot_id = agent_ && agent_->hello() ? agent_->hello()->boot_id : "";
  for (const auto& [address, symbol] : recovery_->interceptor().armed_points()) s.armed.push_back({address, symbol});
  s.crashes = ledger_.crashes();
  s.recoveries = ledger_.recoveries();
  s.reboots = ledger_.reboots();
  s.last_crash = ledger_.last();
  std::string text = s.to_json().dump();
  // The account others see (libvirt: `immortal list --connect`): when something changed, and
  // every minute as a sign of life.
  if (text != persisted_ || Clock::now() - annotated_ > std::chrono::seconds(60)) {
    char host[256] = {};
    ::gethostname(host, sizeof host - 1);
    machine_->annotate({{"state", to_string(state_.get())}, {"supervisor-pid", ::getpid()}, {"host", host},
                        {"crashes", s.crashes}, {"recovered", s.recoveries}, {"reboots", s.reboots},
                        {"updated", std::chrono::duration_cast<std::chrono::seconds>(
                                        std::chrono::system_clock::now().time_since_epoch()).count()}});
    annotated_ = Clock::now();
  }
  if (text == persisted_) return;
  try {
    s.save(dir_.file("state.json"));
    persisted_ = text;
  } catch (const Error& e) {
    options_.say(std::string("cannot save the instance state (a restart could not re-attach): ") + e.what());
  }
}

// Lets go of the VM: it runs on, its breakpoints set, for the supervisor that takes over.
void Supervisor::release_instance() {
  persist();
  released_ = true;
  if (agent_) agent_->abandon("the instance is being handed over");
  metrics_server_.reset();  // its port is the next supervisor's
  commands_.reset();
  recovery_.reset();
  repair_.reset();  // the repair VM is ours alone: it ends with us
  if (bundles_) bundles_->stop();
  bundles_.reset();
  kernel_.reset();
  profile_.reset();
  agent_.reset();
  if (machine_) machine_->release();
  machine_.reset();
  dir_.unlock();
}

void Supervisor::let_go() {
  if (control_) control_->close_all("the supervisor is detaching");
  bool gone = state_.is(GuestState::shut_off);  // the VM ended (saved, migrated, destroyed): nothing runs on
  stop_reason_ = fmt::format("detached from {} VM \"{}\" ({}){}", machine_->backend(), options_.machine.name, stop_reason_,
                             gone ? "" : ": it runs on, unwatched until attached again");
  event("detached", {{"reason", stop_reason_}});
  machine_->annotate({{"state", "unprotected"}, {"reason", stop_reason_},
                      {"updated", std::chrono::duration_cast<std::chrono::seconds>(
                                      std::chrono::system_clock::now().time_since_epoch()).count()}});
  release_instance();
  ::unlink(dir_.file("control.sock").c_str());
}

void Supervisor::upgrade(ControlRequest request) {
  std::string binary = request.body().value("binary", "");
  auto deadline = std::chrono::seconds(std::clamp(request.body().value("timeout_s", 120), 10, 3600));
  if (binary.empty() || binary[0] != '/' || ::access(binary.c_str(), X_OK) != 0)
    return request.fail(static_cast<int>(ExitCode::usage), "upgrade needs the absolute path of an executable immortal");
  control_->close_all("the instance is being handed to another supervisor", request.connection());
  control_->stop_listening();
  ::unlink(dir_.file("control.sock").c_str());
  persist();
  auto saved = InstanceState::load(dir_.file("state.json"));
  auto root = std::filesystem::path(dir_.path()).parent_path().string();
  UpgradeOutcome out = hand_over(binary, root, dir_.name(), deadline, options_.recovery.enabled,
                                 [this] { release_instance(); },
                                 [&] {
                                   dir_.relock();
                                   released_ = false;
                                   take_over(*saved);
                                 },
                                 options_.say);
  if (out.upgraded) {
    request.reply({{"upgraded", true}, {"supervisor_pid", out.new_supervisor_pid}, {"previous_supervisor_pid", ::getpid()},
                   {"detail", out.detail}});
    stop("handed over to " + binary + ": " + out.detail, 0);
  } else {
    event("upgrade-rolled-back", {{"binary", binary}, {"reason", out.detail}});
    request.reply({{"upgraded", false}, {"rolled_back", true}, {"supervisor_pid", ::getpid()}, {"detail", out.detail}});
  }
}


}  // namespace immortal::vmm
