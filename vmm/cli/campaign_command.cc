// `immortal campaign PLAN`: a fault campaign (vmm/campaign/), and `--report DIR` for the report of
// one already run.
#include "base/error.h"
#include "campaign/campaign_plan.h"
#include "campaign/campaign_report.h"
#include "campaign/campaign_results.h"
#include "campaign/campaign_runner.h"
#include "cli/commands.h"

#include <fmt/format.h>

#include <iostream>

namespace immortal::vmm {

int campaign_command(const GlobalOptions& global, const CampaignCommand& c) {
  if (!c.report_dir.empty()) {
    CampaignResults results(c.report_dir);
    CampaignReport report(results);
    report.write_html(c.report_dir + "/report.html");
    std::cout << report.summary_table() << fmt::format("\nreport: {}/report.html\n", c.report_dir);
    return report.records_lost_in_recoveries() ? static_cast<int>(ExitCode::failure) : 0;
  }
  if (c.plan.empty()) fail(ExitCode::usage, "campaign needs a PLAN file (or --report DIR)");
  CampaignPlan plan = read_campaign_plan(c.plan);
  if (c.dry_run) {
    for (const auto& p : campaign_phases(plan))
      for (const auto& inj : phase_injections(plan, p))
        std::cout << fmt::format("{} {} {} {}\n", p.name, inj.index + 1, to_string(inj.source), inj.fault);
    return 0;
  }
  CampaignOptions options;
  options.out_dir = c.output.empty() ? plan.name + ".campaign" : c.output;
  options.restart = c.restart;
  return run_campaign(global, plan, options);
}

}  // namespace immortal::vmm
