#include "campaign/campaign_results.h"

#include "base/error.h"
#include "base/unique_fd.h"
#include "campaign/campaign_plan.h"

#include <fmt/format.h>

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <sstream>

namespace immortal::vmm {

using nlohmann::json;

namespace {

constexpr std::size_t kMaxResultLine = 1 << 20;

void write_all(int fd, const std::string& text, const std::string& path) {
  std::size_t done = 0;
  while (done < text.size()) {
    ssize_t n = ::write(fd, text.data() + done, text.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) fail(ExitCode::failure, "cannot write \"{}\": {}", path, std::strerror(errno));
    done += static_cast<std::size_t>(n);
  }
}

// Written to NAME.tmp, fsynced, renamed: a crash of the host leaves the old file or the new one.
void write_file_atomically(const std::string& path, const std::string& text) {
  std::string tmp = path + ".tmp";
  UniqueFd fd(::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644));
  if (!fd) fail(ExitCode::failure, "cannot write \"{}\": {}", tmp, std::strerror(errno));
  write_all(fd.get(), text, tmp);
  ::fsync(fd.get());
  if (::rename(tmp.c_str(), path.c_str()) != 0) fail(ExitCode::failure, "cannot rename \"{}\": {}", tmp, std::strerror(errno));
}

bool exists(const std::string& path) { return ::access(path.c_str(), F_OK) == 0; }

}  // namespace

std::vector<CampaignPhase> campaign_phases(const CampaignPlan& plan) {
  std::vector<CampaignPhase> phases = {{"immortal", true, -1}};
  for (int v : plan.baselines.panic_on_oops) phases.push_back({fmt::format("panic_on_oops={}", v), false, v});
  return phases;
}

std::vector<Injection> phase_injections(const CampaignPlan& plan, const CampaignPhase& phase) {
  return expand_injections(plan, phase.recovery ? 0 : plan.baselines.per_type);
}

CampaignResults::CampaignResults(std::string out_dir, const CampaignPlan& plan, bool restart) : dir_(std::move(out_dir)) {
  if (::mkdir(dir_.c_str(), 0755) != 0 && errno != EEXIST)
    fail(ExitCode::bad_input, "cannot make the campaign directory \"{}\": {}", dir_, std::strerror(errno));
  std::string info_path = dir_ + "/campaign.json";
  std::string results_path = dir_ + "/results.jsonl";
  if (exists(info_path) && !restart) {
    load();
    if (info_.value("plan_digest", "") != plan.digest)
      fail(ExitCode::bad_input,
           "\"{}\" holds the results of another plan ({}): give another --output, or --restart to set them aside", dir_,
           info_.value("plan", "?"));
    return;
  }
  if (restart && exists(results_path)) {
    int n = 1;
    while (exists(fmt::format("{}.{}", results_path, n))) ++n;
    ::rename(results_path.c_str(), fmt::format("{}.{}", results_path, n).c_str());
  }
  info_ = {{"format", 1}, {"name", plan.name}, {"plan", plan.path}, {"plan_digest", plan.digest}};
  json phases = json::array();
  for (const auto& p : campaign_phases(plan)) phases.push_back(p.name);
  info_["phases"] = phases;
  write_file_atomically(info_path, info_.dump(2) + "\n");
  UniqueFd fd(::open(results_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644));
  if (!fd) fail(ExitCode::failure, "cannot write \"{}\": {}", results_path, std::strerror(errno));
}

CampaignResults::CampaignResults(std::string out_dir) : dir_(std::move(out_dir)) {
  if (!exists(dir_ + "/campaign.json")) fail(ExitCode::bad_input, "\"{}\" holds no campaign (no campaign.json)", dir_);
  load();
}

void CampaignResults::load() {
  std::ifstream info(dir_ + "/campaign.json");
  info_ = json::parse(info, nullptr, /*allow_exceptions=*/false);
  if (!info_.is_object() || !info_.contains("plan_digest") || !info_["plan_digest"].is_string())
    fail(ExitCode::bad_input, "\"{}/campaign.json\" is not a campaign's description", dir_);
  std::ifstream in(dir_ + "/results.jsonl");
  std::string line;
  while (std::getline(in, line)) {
    if (line.empty()) continue;
    json r = line.size() > kMaxResultLine ? json() : json::parse(line, nullptr, false);
    // A line cut short by a host crash, or edited by hand: said, and that injection runs again.
    if (!r.is_object() || !r.contains("phase") || !r["phase"].is_string() || !r.contains("index") ||
        !r["index"].is_number_integer() || !r.contains("outcome") || !r["outcome"].is_string()) {
      ++skipped_;
      continue;
    }
    if (!done_.insert({r["phase"].get<std::string>(), r["index"].get<int>()}).second) continue;
    results_.push_back(std::move(r));
  }
}

void CampaignResults::add(const json& result) {
  std::string path = dir_ + "/results.jsonl";
  UniqueFd fd(::open(path.c_str(), O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644));
  if (!fd) fail(ExitCode::failure, "cannot append to \"{}\": {}", path, std::strerror(errno));
  write_all(fd.get(), result.dump(-1, ' ', false, json::error_handler_t::replace) + "\n", path);
  ::fsync(fd.get());
  done_.insert({result.value("phase", ""), result.value("index", -1)});
  results_.push_back(result);
}

bool survived(const json& r) {
  std::string o = r.value("outcome", "");
  return (o == "recovered" || o == "continued") && r.value("workload_back", true);
}

bool crashed(const json& r) {
  std::string o = r.value("outcome", "");
  return o != "no-crash" && o != "unavailable" && o != "inject-failed";
}

}  // namespace immortal::vmm
