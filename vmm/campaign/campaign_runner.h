// Runs a campaign: every phase (immortal, then the stock-kernel baselines) in a guest of its own,
// the faults one after another in the same guest lifetime while the records workload writes,
// rebooting only when the phase's crash handling does. Each injection's result is kept as it
// ends; Ctrl-C (SIGINT, SIGTERM) stops after the guest is powered off, and the same command
// resumes. Progress goes to stderr: a bar with ETA on a terminal, plain lines otherwise.
#pragma once

#include "cli/commands.h"

#include <string>

namespace immortal::vmm {

struct CampaignPlan;

struct CampaignOptions {
  std::string out_dir;  // results, report, consoles, disks, bundles
  bool restart = false;  // set earlier results aside instead of resuming
};

// The exit status: 0 when every phase ran and no acknowledged record was lost in a recovered
// injection; 1 when records were lost (named in the report); 130 when interrupted.
int run_campaign(const GlobalOptions& global, const CampaignPlan& plan, const CampaignOptions& options);

}  // namespace immortal::vmm
