#include "control/metrics.h"

#include <fmt/format.h>

namespace immortal::vmm {

using json = nlohmann::json;

namespace {

constexpr std::size_t kOpenCrashes = 1024;  // crashes awaiting an outcome that are remembered

std::uint64_t crash_id(const json& fields) {
  auto c = fields.find("crash");
  return c != fields.end() && c->is_number_integer() && c->get<std::int64_t>() > 0 ? c->get<std::uint64_t>() : 0;
}

// What kind of crash the analysis said it was (oops, bug, warn, panic, soft-lockup, …).
std::string kind_of(const json& fields) {
  if (auto a = fields.find("analysis"); a != fields.end() && a->is_object()) {
    if (auto k = a->find("kind"); k != a->end() && k->is_string() && !k->get<std::string>().empty()) return k->get<std::string>();
  }
  return fields.value("caught_by", "") == "pvpanic" ? "panic" : "unknown";
}

double number(const json& j, const char* key) {
  auto v = j.find(key);
  return v != j.end() && v->is_number() ? v->get<double>() : 0;
}

}  // namespace

std::string prometheus_label(const std::string& value) {
  std::string out;
  for (char c : value) {
    if (c == '\\') out += "\\\\";
    else if (c == '"') out += "\\\"";
    else if (c == '\n') out += "\\n";
    else out += c;
  }
  return out;
}

std::string merge_expositions(const std::vector<std::string>& parts) {
  struct Family {
    std::string help, type, samples;
  };
  std::vector<std::string> order;
  std::map<std::string, Family> families;
  auto family = [&](const std::string& name) -> Family& {
    auto [it, added] = families.try_emplace(name);
    if (added) order.push_back(name);
    return it->second;
  };
  for (const auto& part : parts) {
    std::string current;  // the family whose HELP or TYPE came last
    std::size_t start = 0;
    while (start < part.size()) {
      std::size_t end = part.find('\n', start);
      if (end == std::string::npos) end = part.size();
      std::string line = part.substr(start, end - start);
      start = end + 1;
      if (line.rfind("# HELP ", 0) == 0 || line.rfind("# TYPE ", 0) == 0) {
        std::string rest = line.substr(7);
        current = rest.substr(0, rest.find(' '));
        Family& f = family(current);
        std::string& slot = line[2] == 'H' ? f.help : f.type;
        if (slot.empty()) slot = line + "\n";
      } else if (!line.empty() && line[0] != '#' && !current.empty() && line.rfind(current, 0) == 0) {
        family(current).samples += line + "\n";
      }
    }
  }
  std::string out;
  for (const auto& name : order) {
    const Family& f = families[name];
    out += f.help + f.type + f.samples;
  }
  return out;
}

void InstanceMetrics::on_event(const std::string& name, const json& fields) {
  ++events_;
  std::uint64_t crash = crash_id(fields);
  auto resolve = [&](const std::string& outcome) {
    auto it = kind_of_crash_.find(crash);
    if (it == kind_of_crash_.end()) return;  // caught by an earlier supervisor, or resolved already
    ++outcomes_[{it->second, outcome}];
    kind_of_crash_.erase(it);
  };
  if (name == "crash" && crash) {
    kind_of_crash_[crash] = kind_of(fields);
    while (kind_of_crash_.size() > kOpenCrashes) kind_of_crash_.erase(kind_of_crash_.begin());
  } else if (name == "recovered") {
    resolve("recovered");
  } else if (name == "reboot") {
    resolve("rebooted");
  } else if (name == "kdump") {
    resolve("kdump");
  } else if (name == "recovery-failed") {
    ++verification_failures_[fields.value("check", std::string("unknown"))];
  } else if (name == "resumed" && fields.contains("intercept_to_resume_ms")) {
    double seconds = number(fields, "intercept_to_resume_ms") / 1000;
    for (std::size_t i = 0; i < kLatencyBuckets.size(); ++i)
      if (seconds <= kLatencyBuckets[i]) ++latency_buckets_[i];
    ++latency_count_;
    latency_sum_ += seconds;
  } else if (name == "bundle") {
    bundle_bytes_ += static_cast<std::uint64_t>(number(fields, "vmcore_bytes"));
  }
}

std::string InstanceMetrics::render(const json& status) const {
  std::string out;
  const std::string g = "guest=\"" + prometheus_label(guest_) + "\"";
  auto family = [&](const char* name, const char* type, const char* help) {
    out += fmt::format("# HELP {} {}\n# TYPE {} {}\n", name, help, name, type);
  };
  auto sample = [&](const char* name, const std::string& labels, double value) {
    out += fmt::format("{}{{{}}} {}\n", name, labels, value);
  };
  const json empty = json::object();
  const json& rs = status.contains("recovery_state") && status["recovery_state"].is_object() ? status["recovery_state"] : empty;

  family("immortal_up", "gauge", "1 while a supervisor protects the guest.");
  sample("immortal_up", g, 1);
  family("immortal_guest_state", "gauge", "The guest's state: 1 for the one it is in.");
  std::string state = status.value("state", "unknown");
  for (const char* s : {"starting", "booting", "running", "hung", "crashed", "recovering", "rebooting", "shut off"})
    sample("immortal_guest_state", g + ",state=\"" + s + "\"", state == s ? 1 : 0);
  family("immortal_recovery_enabled", "gauge", "1 when crashes are recovered, 0 when the stock kernel's reaction shows.");
  sample("immortal_recovery_enabled", g, status.value("recovery", "") == "on" ? 1 : 0);

  family("immortal_crashes_total", "counter", "Crashes caught, in the guest's whole life under immortal.");
  sample("immortal_crashes_total", g, number(rs, "crashes"));
  family("immortal_recoveries_total", "counter", "Crashes recovered in place and verified, in the guest's whole life under immortal.");
  sample("immortal_recoveries_total", g, number(rs, "recovered"));
  family("immortal_reboots_total", "counter", "Reboots immortal made (a crash it would not or could not recover, a hang).");
  sample("immortal_reboots_total", g, number(rs, "reboots"));
  family("immortal_crash_outcomes_total", "counter",
         "Crashes by kind and outcome (recovered, rebooted, kdump) since this supervisor started.");
  for (const auto& [key, count] : outcomes_)
    sample("immortal_crash_outcomes_total",
           g + ",kind=\"" + prometheus_label(key.first) + "\",outcome=\"" + prometheus_label(key.second) + "\"",
           static_cast<double>(count));
  family("immortal_recovery_verification_failures_total", "counter",
         "Recoveries whose check of the resumed guest failed (then rebooted), by check, since this supervisor started.");
  for (const auto& [check, count] : verification_failures_)
    sample("immortal_recovery_verification_failures_total", g + ",check=\"" + prometheus_label(check) + "\"",
           static_cast<double>(count));

  family("immortal_recovery_latency_seconds", "histogram",
         "From the crash's interception to the guest resumed, since this supervisor started.");
  for (std::size_t i = 0; i < kLatencyBuckets.size(); ++i)
    sample("immortal_recovery_latency_seconds_bucket", g + fmt::format(",le=\"{}\"", kLatencyBuckets[i]),
           static_cast<double>(latency_buckets_[i]));
  sample("immortal_recovery_latency_seconds_bucket", g + ",le=\"+Inf\"", static_cast<double>(latency_count_));
  sample("immortal_recovery_latency_seconds_sum", g, latency_sum_);
  sample("immortal_recovery_latency_seconds_count", g, static_cast<double>(latency_count_));

  family("immortal_quarantined_functions", "gauge", "Driver functions quarantined now (immortal unquarantine puts them back).");
  sample("immortal_quarantined_functions", g, rs.contains("quarantined") && rs["quarantined"].is_array() ? rs["quarantined"].size() : 0);

  const json& bundles = status.contains("bundles") && status["bundles"].is_object() ? status["bundles"] : empty;
  family("immortal_bundles_total", "counter", "Diagnosis bundles written since this supervisor started.");
  sample("immortal_bundles_total", g, number(bundles, "written"));
  family("immortal_bundle_vmcore_bytes_total", "counter", "Bytes of the vmcores of those bundles.");
  sample("immortal_bundle_vmcore_bytes_total", g, static_cast<double>(bundle_bytes_));

  family("immortal_repair_worker_ready", "gauge",
         "1 when a repair worker (the repair VM, or the inline process) is ready for the next crash.");
  if (status.contains("repair") && status["repair"].is_object()) {
    for (const char* mode : {"vm", "inline"}) {
      const json& w = status["repair"].contains(mode) ? status["repair"][mode] : empty;
      if (!w.is_object() || w.empty()) continue;
      sample("immortal_repair_worker_ready", g + ",mode=\"" + mode + "\"", w.value("state", "") == "ready" ? 1 : 0);
    }
  }

  const json& agent = status.contains("agent") && status["agent"].is_object() ? status["agent"] : empty;
  family("immortal_agent_connected", "gauge", "1 while the guest agent is connected and answering.");
  sample("immortal_agent_connected", g, agent.value("connected", false) ? 1 : 0);
  if (agent.contains("last_heard_s")) {
    family("immortal_agent_heartbeat_age_seconds", "gauge", "Seconds since the guest agent was last heard.");
    sample("immortal_agent_heartbeat_age_seconds", g, number(agent, "last_heard_s"));
  }
  family("immortal_events_total", "counter", "Events the supervisor emitted since it started (immortal events).");
  sample("immortal_events_total", g, static_cast<double>(events_));
  return out;
}

}  // namespace immortal::vmm
