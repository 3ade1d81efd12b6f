// The instance's Prometheus metrics (`--metrics-listen`): what an operator graphs and alerts on.
// Counts come from two places: the crash ledger in `status` (crashes, recoveries, reboots: kept
// across supervisor restarts) and the events the supervisor emits (kind and outcome of each crash,
// recovery latency, verification failures, bundle bytes: this supervisor's life; Prometheus takes
// a counter that starts again as a reset). Text exposition format 0.0.4, checked by promtool.
#pragma once

#include <nlohmann/json.hpp>

#include <array>
#include <cstdint>
#include <map>
#include <string>
#include <tuple>
#include <vector>

namespace immortal::vmm {

class InstanceMetrics {
 public:
  explicit InstanceMetrics(std::string guest) : guest_(std::move(guest)) {}

  // Every event the supervisor emits passes here (Supervisor::event).
  void on_event(const std::string& name, const nlohmann::json& fields);
  // The whole exposition, with the gauges taken from the instance's status (control/status.h).
  std::string render(const nlohmann::json& status) const;

  static constexpr std::array<double, 11> kLatencyBuckets = {0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10};

 private:
  std::string guest_;
  std::map<std::uint64_t, std::string> kind_of_crash_;  // crashes whose outcome is not known yet
  std::map<std::pair<std::string, std::string>, std::uint64_t> outcomes_;  // (kind, outcome) → count
  std::map<std::string, std::uint64_t> verification_failures_;            // check → count
  std::array<std::uint64_t, kLatencyBuckets.size()> latency_buckets_{};   // cumulative at render
  std::uint64_t latency_count_ = 0;
  double latency_sum_ = 0;
  std::uint64_t bundle_bytes_ = 0;
  std::uint64_t events_ = 0;
};

// Several expositions as one, each metric family once (its HELP and TYPE from the first part
// that has it, then the samples of every part in order): the host service's endpoint, made of
// every instance's. Lines that are neither comments nor samples of a family are dropped.
std::string merge_expositions(const std::vector<std::string>& parts);

// A label value as the exposition format wants it (backslash, quote and newline escaped).
std::string prometheus_label(const std::string& value);

}  // namespace immortal::vmm
