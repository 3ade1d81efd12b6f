// The supervisor, continued: what it tells the outside — events (the event log, and the metrics
// they move), its status, the Prometheus exposition, and the one-time "ready" report of --detach.
#include "supervisor.h"

#include "control/status.h"

namespace immortal::vmm {

void Supervisor::report_ready(const std::string& how) {
  if (ready_summary_.empty()) return;
  if (options_.on_ready) options_.on_ready(ready_summary_ + "; " + how);
  ready_summary_.clear();
}

void Supervisor::event(const std::string& name, json fields) {
  metrics_.on_event(name, fields);
  metrics_due_ = true;
  if (std::string problem = events_.append(name, std::move(fields)); !problem.empty()) options_.say(problem);
  if (!options_.on_event.empty()) {
    if (!hook_) hook_ = std::make_unique<EventHook>(options_.on_event, options_.machine.name, dir_.file("hooks.log"));
    hook_->fire(events_.recent().back());
  }
}

json Supervisor::status() const {
  json s = instance_status({options_.machine, options_.accelerator, options_.recovery.enabled, dir_.path(),
                            dir_.file("events.jsonl"), state_.get(), machine_.get(), started_, boot_time_, agent_.get(),
                            profile_.get(), recovery_.get(), ledger_, repair_.get(), bundles_.get()});
  if (!kernel_symbols_.is_null() && s.contains("profile")) s["profile"]["kernel_symbols"] = kernel_symbols_;
  if (!kernel_types_.is_null() && s.contains("profile")) s["profile"]["kernel_types"] = kernel_types_;
  if (!kernel_unwind_.is_null() && s.contains("profile")) s["profile"]["kernel_unwind_tables"] = kernel_unwind_;
  return s;
}

void Supervisor::report_tick() {
  if (hook_) hook_->reap();
  if (!metrics_server_ || (!metrics_due_ && Clock::now() - metrics_published_ < std::chrono::seconds(1))) return;
  metrics_server_->publish(metrics_.render(status()));
  metrics_due_ = false;
  metrics_published_ = Clock::now();
}

}  // namespace immortal::vmm
