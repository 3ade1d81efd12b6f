#include "campaign/campaign_report.h"

#include "base/error.h"
#include "base/markup_text.h"
#include "base/terminal_text.h"
#include "campaign/campaign_results.h"

#include <fmt/format.h>

#include <algorithm>
#include <cstdlib>
#include <fstream>
#include <map>
#include <set>
#include <sstream>

namespace immortal::vmm {

using nlohmann::json;

namespace {

// Colours that stay apart for readers with the common colour-vision deficiencies (Okabe–Ito).
const char* const kPalette[] = {"#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#F0E442", "#000000"};

double percentile(std::vector<double> v, double p) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  auto i = static_cast<std::size_t>(p * static_cast<double>(v.size() - 1) + 0.5);
  return v[std::min(i, v.size() - 1)];
}

// Whole percents, but never rounded up to 100% (227 of 228 is 99.6%).
std::string pct(int part, int whole) {
  if (!whole) return "-";
  double p = 100.0 * part / whole;
  return part != whole && p >= 99.5 ? fmt::format("{:.1f}%", p) : fmt::format("{:.0f}%", p);
}

std::string ms(double v) { return v >= 10000 ? fmt::format("{:.1f} s", v / 1000) : fmt::format("{:.0f} ms", v); }

struct Tally {
  int injections = 0, crashed = 0, survived = 0, rebooted = 0, hung = 0, no_crash = 0, unavailable = 0;
  std::uint64_t lost = 0;
  void add(const json& r) {
    ++injections;
    std::string o = r.value("outcome", "");
    if (::immortal::vmm::crashed(r)) ++crashed;
    if (::immortal::vmm::survived(r)) ++survived;
    if (o == "rebooted" || o == "kdump") ++rebooted;
    if (o == "hung" || o == "unknown" || o == "device-hung") ++hung;
    if (o == "no-crash") ++no_crash;
    if (o == "unavailable" || o == "inject-failed") ++unavailable;
    lost += r.value("records_lost", std::uint64_t{0});
  }
};

// How long the workload stood still around each crash of a phase.
std::vector<double> workload_gaps(const CampaignResults& results, const std::string& phase) {
  std::vector<double> gaps;
  for (const auto& r : results.all())
    if (r.value("phase", "") == phase && crashed(r) && r.contains("workload_gap_ms")) gaps.push_back(r["workload_gap_ms"].get<double>());
  return gaps;
}

std::vector<std::string> phase_order(const CampaignResults& results) {
  std::vector<std::string> out;
  if (results.info().contains("phases") && results.info()["phases"].is_array())
    for (const auto& p : results.info()["phases"])
      if (p.is_string()) out.push_back(p.get<std::string>());
  for (const auto& r : results.all())
    if (std::find(out.begin(), out.end(), r.value("phase", "")) == out.end()) out.push_back(r.value("phase", ""));
  return out;
}

std::string phase_short(const std::string& phase) {
  if (phase == "immortal") return "immortal";
  return "stock, " + phase;
}

std::string phase_title(const std::string& phase) {
  if (phase == "immortal") return "immortal (recovery on)";
  if (phase == "panic_on_oops=1") return "stock kernel, panic_on_oops=1 (reboot)";
  if (phase == "panic_on_oops=0") return "stock kernel, panic_on_oops=0 (oops and go on)";
  return phase;
}

json dataset(const std::string& label, const json& data, int colour) {
  return {{"label", label}, {"data", data}, {"backgroundColor", kPalette[colour % 8]}, {"borderColor", kPalette[colour % 8]}};
}

// Downtime buckets (ms), a log scale from tens of milliseconds to a minute.
const double kBuckets[] = {100, 200, 500, 1000, 2000, 5000, 10000, 20000, 60000};

std::string bucket_label(std::size_t i) {
  auto name = [](double v) { return v >= 1000 ? fmt::format("{:g} s", v / 1000) : fmt::format("{:g} ms", v); };
  if (i == 0) return "< " + name(kBuckets[0]);
  if (i == std::size(kBuckets)) return "≥ " + name(kBuckets[i - 1]);
  return name(kBuckets[i - 1]) + "–" + name(kBuckets[i]);
}

}  // namespace

std::string chartjs_path() {
  if (const char* env = std::getenv("IMMORTAL_CHARTJS"); env && *env) return env;
  return "/usr/share/javascript/chart.js/chart.min.js";
}

CampaignReport::CampaignReport(const CampaignResults& results) : results_(results) {
  auto phases = phase_order(results);
  const auto& all = results.all();
  charts_ = json::array();

  // 1, 2: survival rate per source and per type: of the injections that crashed the guest, the
  // share after which it went on without a reboot and its workload came back.
  for (std::string by : {"source", "fault"}) {
    std::vector<std::string> keys;
    std::map<std::pair<std::string, std::string>, Tally> t;
    for (const auto& r : all) {
      std::string k = r.value(by, "");
      if (std::find(keys.begin(), keys.end(), k) == keys.end()) keys.push_back(k);
      t[{r.value("phase", ""), k}].add(r);
    }
    json datasets = json::array(), rows = json::array();
    int colour = 0;
    for (const auto& p : phases) {
      json data = json::array();
      for (const auto& k : keys) {
        const Tally& x = t[{p, k}];
        data.push_back(x.crashed ? json(std::round(1000.0 * x.survived / x.crashed) / 10) : json());
      }
      datasets.push_back(dataset(phase_title(p), data, colour++));
    }
    for (const auto& k : keys) {
      json row = {k};
      for (const auto& p : phases) {
        const Tally& x = t[{p, k}];
        row.push_back(x.injections ? fmt::format("{} of {} ({}){}", x.survived, x.crashed, pct(x.survived, x.crashed),
                                                 x.no_crash || x.unavailable ? fmt::format("; {} no crash, {} unavailable", x.no_crash, x.unavailable) : "")
                                   : "-");
      }
      rows.push_back(row);
    }
    json header = {by == "source" ? "source" : "fault type"};
    for (const auto& p : phases) header.push_back(phase_title(p) + ": survived of crashed");
    charts_.push_back({{"id", "survival-" + by},
                       {"title", by == "source" ? "Survival rate per fault source" : "Survival rate per fault type"},
                       {"caption", "Of the injections that crashed the guest's kernel, the share after which the guest went on "
                                   "without a reboot and its workload came back (%)."},
                       {"type", "bar"}, {"labels", keys}, {"datasets", datasets}, {"y", "% survived"}, {"ymax", 100},
                       {"table", {{"header", header}, {"rows", rows}}}});
  }

  // 3: how long the workload stood still (the longest gap between two acknowledged records
  // around the injection), against a reboot; and immortal's interception → resume.
  {
    json labels = json::array(), datasets = json::array(), rows = json::array();
    for (std::size_t i = 0; i <= std::size(kBuckets); ++i) labels.push_back(bucket_label(i));
    auto histogram = [&](const std::string& label, const std::vector<double>& values, int colour) {
      std::vector<int> counts(std::size(kBuckets) + 1, 0);
      for (double v : values)
        ++counts[static_cast<std::size_t>(std::upper_bound(std::begin(kBuckets), std::end(kBuckets), v) - std::begin(kBuckets))];
      datasets.push_back(dataset(label, counts, colour));
      rows.push_back({label, values.size(), values.empty() ? "-" : ms(percentile(values, 0.5)),
                      values.empty() ? "-" : ms(percentile(values, 0.95)),
                      values.empty() ? "-" : ms(*std::max_element(values.begin(), values.end()))});
    };
    std::vector<double> resume;
    for (const auto& r : all)
      if (r.value("phase", "") == "immortal" && r.value("outcome", "") == "recovered" && r.contains("intercept_to_resume_ms"))
        resume.push_back(r["intercept_to_resume_ms"].get<double>());
    histogram("immortal: interception → guest resumed", resume, 4);
    for (std::size_t colour = 0; colour < phases.size(); ++colour) {
      histogram(phase_title(phases[colour]) + ": workload stood still", workload_gaps(results, phases[colour]),
                static_cast<int>(colour));
    }
    charts_.push_back({{"id", "downtime"},
                       {"title", "Recovery time against reboot time"},
                       {"caption", "Injections that crashed the kernel, by how long the workload stood still (the longest gap "
                                   "between two acknowledged records, read by the host), and by immortal's own interception → "
                                   "resume time."},
                       {"type", "bar"}, {"labels", labels}, {"datasets", datasets}, {"y", "injections"},
                       {"table", {{"header", {"measure", "injections", "median", "p95", "max"}}, {"rows", rows}}}});
  }

  // 4: records lost: acknowledged (fsynced) records missing from the disk afterwards.
  {
    json labels = json::array(), lost = json::array(), acked = json::array(), rows = json::array();
    for (const auto& p : phases) {
      Tally x;
      std::uint64_t most = 0;
      for (const auto& r : all)
        if (r.value("phase", "") == p) x.add(r), most = std::max(most, r.value("records_acked", std::uint64_t{0}));
      labels.push_back(phase_title(p));
      lost.push_back(x.lost);
      acked.push_back(most);
    }
    for (const auto& r : all)
      if (r.value("records_lost", 0) > 0)
        rows.push_back({r.value("phase", ""), r.value("index", 0) + 1, r.value("fault", ""), r.value("outcome", ""),
                        r.value("records_lost", 0), r.contains("lost_examples") ? r["lost_examples"].dump() : ""});
    if (rows.empty()) rows.push_back({"(none)", "", "", "", 0, ""});
    charts_.push_back({{"id", "records-lost"},
                       {"title", "Workload records lost (must be zero)"},
                       {"caption", "Records the guest's workload was told were durable (fsync returned) and the host did not find "
                                   "intact on the disk image afterwards."},
                       {"type", "bar"}, {"labels", labels},
                       {"datasets", {dataset("records acknowledged (checked on disk after every injection)", acked, 5),
                                     dataset("records lost", lost, 3)}},
                       {"y", "records"}, {"ymin_max", 1},
                       {"table", {{"header", {"phase", "injection", "fault", "outcome", "records lost", "first lost"}}, {"rows", rows}}}});
  }

  // 5: outcomes over time, in the order the injections ran, in blocks.
  {
    std::vector<const json*> ordered;
    for (const auto& r : all) ordered.push_back(&r);
    std::stable_sort(ordered.begin(), ordered.end(),
                     [](const json* a, const json* b) { return a->value("started_at", "") < b->value("started_at", ""); });
    std::size_t block = std::max<std::size_t>(1, (ordered.size() + 19) / 20);
    std::vector<std::string> outcomes;
    for (const auto* r : ordered)
      if (std::find(outcomes.begin(), outcomes.end(), r->value("outcome", "")) == outcomes.end()) outcomes.push_back(r->value("outcome", ""));
    json labels = json::array(), datasets = json::array(), rows = json::array();
    std::vector<std::vector<int>> counts(outcomes.size());
    for (std::size_t start = 0; start < ordered.size(); start += block) {
      std::size_t end = std::min(ordered.size(), start + block);
      std::string first_phase = ordered[start]->value("phase", ""), last_phase = ordered[end - 1]->value("phase", "");
      labels.push_back(fmt::format("{}–{}{}", start + 1, end, first_phase == last_phase ? " " + first_phase : ""));
      json row = {labels.back()};
      for (std::size_t o = 0; o < outcomes.size(); ++o) {
        int n = 0;
        for (std::size_t i = start; i < end; ++i) n += ordered[i]->value("outcome", "") == outcomes[o];
        counts[o].push_back(n);
        row.push_back(n);
      }
      rows.push_back(row);
    }
    for (std::size_t o = 0; o < outcomes.size(); ++o) datasets.push_back(dataset(outcomes[o], counts[o], static_cast<int>(o)));
    json header = {"injections (in the order they ran)"};
    for (const auto& o : outcomes) header.push_back(o);
    charts_.push_back({{"id", "outcomes-over-time"},
                       {"title", "Outcomes over time"},
                       {"caption", "Every injection of every phase in the order it ran, in blocks."},
                       {"type", "bar"}, {"stacked", true}, {"labels", labels}, {"datasets", datasets}, {"y", "injections"},
                       {"table", {{"header", header}, {"rows", rows}}}});
  }
}

std::uint64_t CampaignReport::records_lost_in_recoveries() const {
  std::uint64_t lost = 0;
  for (const auto& r : results_.all())
    if (r.value("outcome", "") == "recovered" || r.value("outcome", "") == "continued") lost += r.value("records_lost", std::uint64_t{0});
  return lost;
}

std::string CampaignReport::summary_table() const {
  std::ostringstream out;
  auto phases = phase_order(results_);
  out << fmt::format("campaign {}: {} injections\n\n", results_.info().value("name", "?"), results_.all().size());
  out << fmt::format("{:<24} {:>6} {:>8} {:>10} {:>9} {:>6} {:>9} {:>11} {:>11} {:>6}\n", "phase", "faults", "crashed", "survived",
                     "rebooted", "hung", "no crash", "unavailable", "median gap", "lost");
  out << std::string(107, '-') << "\n";
  for (const auto& p : phases) {
    Tally x;
    for (const auto& r : results_.all())
      if (r.value("phase", "") == p) x.add(r);
    std::vector<double> gaps = workload_gaps(results_, p);
    out << fmt::format("{:<24} {:>6} {:>8} {:>10} {:>9} {:>6} {:>9} {:>11} {:>11} {:>6}\n", phase_short(p), x.injections, x.crashed,
                       fmt::format("{} {}", x.survived, pct(x.survived, x.crashed)), x.rebooted, x.hung, x.no_crash, x.unavailable,
                       gaps.empty() ? "-" : ms(percentile(gaps, 0.5)), x.lost);
  }
  std::uint64_t lost = records_lost_in_recoveries();
  out << "\nsurvived: the guest went on without a reboot and its workload came back (of the injections that crashed it);\n"
         "hung: the guest or the faulting device stopped answering; median gap: the workload's longest pause around a crash\n";
  out << (lost ? fmt::format("\nRECORDS LOST in recovered injections: {} (must be zero; the report names them)\n", lost)
               : std::string("\nno acknowledged record was lost in a recovered injection\n"));
  return terminal_safe(out.str(), /*keep_newlines=*/true);
}

void CampaignReport::write_html(const std::string& path) const {
  std::ifstream js_in(chartjs_path(), std::ios::binary);
  if (!js_in)
    fail(ExitCode::bad_input, "cannot read Chart.js at \"{}\" for the report (apt-get install libjs-chart.js, or set IMMORTAL_CHARTJS)",
         chartjs_path());
  std::string chartjs((std::istreambuf_iterator<char>(js_in)), std::istreambuf_iterator<char>());
  auto script_safe = [](std::string s) {
    for (std::size_t at = 0; (at = s.find("</", at)) != std::string::npos; at += 3) s.replace(at, 2, "<\\/");
    return s;
  };
  std::ostringstream h;
  std::string name = results_.info().value("name", "campaign");
  h << "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\n<title>immortal campaign " << markup_escape(name) << "</title>\n"
    << "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; script-src 'unsafe-inline'; "
       "style-src 'unsafe-inline'; img-src data:\">\n"
    << "<style>body{font:14px/1.4 system-ui,sans-serif;margin:2em auto;max-width:1100px;color:#222}"
       "h1{font-size:1.6em}h2{font-size:1.2em;margin-top:2em}table{border-collapse:collapse;margin:.5em 0 1em}"
       "td,th{border:1px solid #ccc;padding:3px 8px;text-align:left;font-variant-numeric:tabular-nums}"
       "th{background:#f3f3f3}.chart{position:relative;height:360px}.caption{color:#555}pre{background:#f7f7f7;padding:1em}"
       ".bad{color:#b00;font-weight:bold}</style></head>\n<body>\n";
  h << "<h1>Fault campaign <code>" << markup_escape(name) << "</code></h1>\n";
  h << "<p>Plan <code>" << markup_escape(results_.info().value("plan", "")) << "</code>, " << results_.all().size()
    << " injections. Phases: immortal with recovery on, and the stock kernel's own reactions (recovery off) as baselines, "
       "all measured in the same run.</p>\n<pre>"
    << markup_escape(summary_table()) << "</pre>\n";
  for (const auto& c : charts_) {
    h << "<section id=\"" << markup_escape(c["id"].get<std::string>()) << "\">\n<h2>" << markup_escape(c["title"].get<std::string>()) << "</h2>\n"
      << "<p class=\"caption\">" << markup_escape(c["caption"].get<std::string>()) << "</p>\n"
      << "<div class=\"chart\"><canvas data-chart=\"" << markup_escape(c["id"].get<std::string>()) << "\" role=\"img\" aria-label=\""
      << markup_escape(c["title"].get<std::string>()) << "\"></canvas></div>\n<table><thead><tr>";
    for (const auto& th : c["table"]["header"]) h << "<th>" << markup_escape(th.is_string() ? th.get<std::string>() : th.dump()) << "</th>";
    h << "</tr></thead><tbody>\n";
    for (const auto& row : c["table"]["rows"]) {
      h << "<tr>";
      for (const auto& td : row) h << "<td>" << markup_escape(td.is_string() ? td.get<std::string>() : td.dump()) << "</td>";
      h << "</tr>\n";
    }
    h << "</tbody></table>\n</section>\n";
  }
  h << "<h2>Every injection</h2>\n<table><thead><tr><th>phase</th><th>#</th><th>fault</th><th>context</th><th>outcome</th>"
       "<th>resume</th><th>workload gap</th><th>lost</th><th>reason</th><th>bundle</th></tr></thead><tbody>\n";
  for (const auto& r : results_.all()) {
    auto num = [&](const char* key) { return r.contains(key) && r[key].is_number() ? ms(r[key].get<double>()) : std::string("-"); };
    std::uint64_t lost = r.value("records_lost", std::uint64_t{0});
    h << "<tr><td>" << markup_escape(r.value("phase", "")) << "</td><td>" << r.value("index", 0) + 1 << "</td><td>" << markup_escape(r.value("fault", ""))
      << "</td><td>" << markup_escape(r.value("context", "")) << "</td><td>" << markup_escape(r.value("outcome", "")) << "</td><td>"
      << num("intercept_to_resume_ms") << "</td><td>" << num("workload_gap_ms") << "</td><td" << (lost ? " class=\"bad\"" : "") << ">"
      << lost << "</td><td>" << markup_escape(r.value("reason", "").substr(0, 160)) << "</td><td>" << markup_escape(r.value("bundle", "")) << "</td></tr>\n";
  }
  h << "</tbody></table>\n";
  h << "<script>\n" << script_safe(chartjs) << "\n</script>\n";
  h << "<script>\nconst charts = " << script_safe(charts_.dump(-1, ' ', false, json::error_handler_t::replace)) << ";\n" << R"JS(
// Errors are kept where a headless browser (the tests) can read them: the body's data attributes.
const errors = [];
window.addEventListener('error', e => { errors.push(String(e.message)); document.body.dataset.errors = errors.join(' | '); });
try {
  for (const c of charts) {
    const canvas = document.querySelector(`canvas[data-chart="${c.id}"]`);
    new Chart(canvas, {
      type: c.type,
      data: {labels: c.labels, datasets: c.datasets},
      options: {
        animation: false, responsive: true, maintainAspectRatio: false,
        plugins: {title: {display: true, text: c.title}, legend: {position: 'bottom'}},
        scales: {x: {stacked: !!c.stacked}, y: {stacked: !!c.stacked, beginAtZero: true, max: c.ymax,
                 suggestedMax: c.ymin_max, title: {display: true, text: c.y}}},
      },
    });
  }
} catch (e) { errors.push(String(e)); }
// A chart is drawn when its canvas has pixels that are not blank.
let drawn = 0;
for (const canvas of document.querySelectorAll('canvas[data-chart]')) {
  const d = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
  let ink = 0;
  for (let i = 3; i < d.length; i += 4) if (d[i] !== 0) ink++;
  if (ink > 500) drawn++;
  canvas.dataset.ink = ink;
}
document.body.dataset.charts = charts.length;
document.body.dataset.chartsDrawn = drawn;
document.body.dataset.errors = errors.join(' | ');
document.body.dataset.rendered = 'yes';
)JS" << "</script>\n</body></html>\n";
  std::string tmp = path + ".tmp";
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    out << h.str();
    if (!out) fail(ExitCode::failure, "cannot write the report \"{}\"", tmp);
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) fail(ExitCode::failure, "cannot write the report \"{}\"", path);
}

}  // namespace immortal::vmm
