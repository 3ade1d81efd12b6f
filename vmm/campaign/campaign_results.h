// A campaign's results: one JSON line per injection in OUT/results.jsonl, appended and fsynced as
// each injection ends, so that an interrupted campaign keeps what it measured and resumes where
// it stopped. OUT/campaign.json names the plan (its digest): a different plan does not resume
// into the same directory. The format is in docs/campaigns.md.
#pragma once

#include <nlohmann/json.hpp>

#include <map>
#include <set>
#include <string>
#include <utility>
#include <vector>

namespace immortal::vmm {

struct CampaignPlan;
struct Injection;

// The phases of a campaign: immortal's own, then the stock-kernel baselines.
struct CampaignPhase {
  std::string name;       // "immortal", "panic_on_oops=1", "panic_on_oops=0"
  bool recovery = true;
  int panic_on_oops = -1;  // the baselines' value; -1: left as the guest has it (recovery sets 1)
};
std::vector<CampaignPhase> campaign_phases(const CampaignPlan& plan);
// The injections a phase runs: every one of the plan's with recovery on, the baselines' share without.
std::vector<Injection> phase_injections(const CampaignPlan& plan, const CampaignPhase& phase);

class CampaignResults {
 public:
  // Opens (or starts) OUT for the plan. restart: earlier results are set aside (results.jsonl.N).
  // Throws Error(bad_input) when OUT holds another plan's results and restart is not given.
  CampaignResults(std::string out_dir, const CampaignPlan& plan, bool restart);
  // Reads OUT's results only (for a report of a campaign that is not running).
  explicit CampaignResults(std::string out_dir);

  bool done(const std::string& phase, int index) const { return done_.count({phase, index}) > 0; }
  void add(const nlohmann::json& result);  // appended and fsynced
  const std::vector<nlohmann::json>& all() const { return results_; }
  const nlohmann::json& info() const { return info_; }  // campaign.json
  const std::string& dir() const { return dir_; }
  std::size_t skipped_lines() const { return skipped_; }

 private:
  void load();

  std::string dir_;
  nlohmann::json info_;
  std::vector<nlohmann::json> results_;
  std::set<std::pair<std::string, int>> done_;
  std::size_t skipped_ = 0;
};

// Outcomes in which the guest went on without a reboot and its workload came back.
bool survived(const nlohmann::json& result);
// A crash happened (the fault did not simply fail to crash, nor was it unavailable).
bool crashed(const nlohmann::json& result);

}  // namespace immortal::vmm
