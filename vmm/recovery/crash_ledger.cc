#include "recovery/crash_ledger.h"

namespace immortal::vmm {

void CrashLedger::set_outcome(std::uint64_t crash, const std::string& outcome, const std::string& failed_check) {
  if (!last_ || last_->crash != crash) return;
  last_->outcome = outcome;
  if (!failed_check.empty()) last_->failed_check = failed_check;
}

void CrashLedger::bundle_written(std::uint64_t crash, const std::string& path) {
  if (last_ && last_->crash == crash) last_->bundle = path;
}

nlohmann::json CrashLedger::last_json() const {
  if (!last_) return nullptr;
  nlohmann::json j = {{"crash", last_->crash}, {"time", last_->time}, {"summary", last_->summary},
                      {"decision", last_->decision}, {"reason", last_->reason}};
  if (!last_->outcome.empty()) j["outcome"] = last_->outcome;
  if (!last_->failed_check.empty()) j["failed_check"] = last_->failed_check;
  if (!last_->bundle.empty()) j["bundle"] = last_->bundle;
  return j;
}

}  // namespace immortal::vmm
