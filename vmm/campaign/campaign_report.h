// What a campaign's results say, for people: a summary table for the terminal and one
// self-contained HTML file (no network: Chart.js, from Debian's libjs-chart.js, is inlined) with
// a chart for each question — survival per source and per type, how long the workload stood
// still against a reboot, records lost, outcomes over time — each with the numbers behind it
// in a table. The page checks its own charts once drawn (body data attributes) so that a
// headless browser can tell a report that rendered from one that did not.
#pragma once

#include <nlohmann/json.hpp>

#include <string>

namespace immortal::vmm {

class CampaignResults;

class CampaignReport {
 public:
  explicit CampaignReport(const CampaignResults& results);
  std::string summary_table() const;
  // Throws Error(bad_input) when Chart.js cannot be read.
  void write_html(const std::string& path) const;
  std::uint64_t records_lost_in_recoveries() const;
  // The charts' data (also embedded in the page): one object per chart.
  const nlohmann::json& charts() const { return charts_; }

 private:
  const CampaignResults& results_;
  nlohmann::json charts_;
};

// Where the page's Chart.js comes from: $IMMORTAL_CHARTJS, else Debian's libjs-chart.js.
std::string chartjs_path();

}  // namespace immortal::vmm
