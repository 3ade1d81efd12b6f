// The Prometheus metrics: counters moved by the supervisor's events, gauges from its status,
// and the listen address as --metrics-listen takes it. (promtool judges the exposition in the
// libvirt integration test, against a live supervisor.)
#include "base/error.h"
#include "control/metrics.h"
#include "control/metrics_server.h"

#include <catch2/catch.hpp>

using namespace immortal;
using namespace immortal::vmm;
using json = nlohmann::json;

TEST_CASE("metrics count crashes by kind and outcome, latency and bundle bytes from the events", "[metrics]") {
  InstanceMetrics m("web1");
  json status = {{"state", "running"}, {"recovery", "on"},
                 {"recovery_state", {{"crashes", 3}, {"recovered", 1}, {"reboots", 1}, {"quarantined", json::array({json::object()})}}},
                 {"bundles", {{"written", 2}}},
                 {"repair", {{"mode", "vm"}, {"vm", {{"state", "ready"}}}}},
                 {"agent", {{"connected", true}, {"last_heard_s", 0.4}}}};
  std::string before = m.render(status);
  CHECK_THAT(before, Catch::Contains("immortal_crashes_total{guest=\"web1\"} 3\n") &&
                         Catch::Contains("immortal_guest_state{guest=\"web1\",state=\"running\"} 1\n") &&
                         Catch::Contains("immortal_guest_state{guest=\"web1\",state=\"crashed\"} 0\n") &&
                         Catch::Contains("immortal_quarantined_functions{guest=\"web1\"} 1\n") &&
                         Catch::Contains("immortal_repair_worker_ready{guest=\"web1\",mode=\"vm\"} 1\n") &&
                         Catch::Contains("immortal_agent_heartbeat_age_seconds{guest=\"web1\"} 0.4\n") &&
                         Catch::Contains("immortal_recovery_latency_seconds_count{guest=\"web1\"} 0\n") &&
                         !Catch::Contains("immortal_crash_outcomes_total{"));

  m.on_event("crash", {{"crash", 7}, {"caught_by", "breakpoint"}, {"analysis", {{"kind", "oops"}}}});
  m.on_event("resumed", {{"crash", 7}, {"intercept_to_resume_ms", 42.0}});
  m.on_event("recovered", {{"crash", 7}});
  m.on_event("recovered", {{"crash", 7}});  // once only
  m.on_event("crash", {{"crash", 8}, {"caught_by", "pvpanic"}});
  m.on_event("recovery-failed", {{"crash", 8}, {"check", "locks"}});
  m.on_event("reboot", {{"crash", 8}, {"reason", "…"}});
  m.on_event("recovered", {{"crash", 99}});  // caught by an earlier supervisor: not counted here
  m.on_event("bundle", {{"crash", 7}, {"vmcore_bytes", 1000}});
  m.on_event("bundle", {{"crash", 8}, {"vmcore_bytes", 24}});
  std::string after = m.render(status);
  INFO(after);
  CHECK_THAT(after, Catch::Contains("immortal_crash_outcomes_total{guest=\"web1\",kind=\"oops\",outcome=\"recovered\"} 1\n") &&
                        Catch::Contains("immortal_crash_outcomes_total{guest=\"web1\",kind=\"panic\",outcome=\"rebooted\"} 1\n") &&
                        Catch::Contains("immortal_recovery_verification_failures_total{guest=\"web1\",check=\"locks\"} 1\n") &&
                        Catch::Contains("immortal_recovery_latency_seconds_bucket{guest=\"web1\",le=\"0.025\"} 0\n") &&
                        Catch::Contains("immortal_recovery_latency_seconds_bucket{guest=\"web1\",le=\"0.05\"} 1\n") &&
                        Catch::Contains("immortal_recovery_latency_seconds_bucket{guest=\"web1\",le=\"+Inf\"} 1\n") &&
                        Catch::Contains("immortal_recovery_latency_seconds_sum{guest=\"web1\"} 0.042\n") &&
                        Catch::Contains("immortal_bundle_vmcore_bytes_total{guest=\"web1\"} 1024\n"));
  // Every sample belongs to a family announced with HELP and TYPE.
  CHECK(after.find("# TYPE immortal_recovery_latency_seconds histogram\n") != std::string::npos);
  CHECK(prometheus_label("a\"b\\c\nd") == "a\\\"b\\\\c\\nd");
}

TEST_CASE("--metrics-listen takes ADDRESS:PORT, IPv6 in brackets", "[metrics][cli]") {
  auto a = parse_listen_address("127.0.0.1:9100");
  CHECK(a.host == "127.0.0.1");
  CHECK(a.port == 9100);
  a = parse_listen_address("[::1]:9101");
  CHECK(a.host == "::1");
  CHECK(a.port == 9101);
  for (const char* bad : {"", "9100", ":9100", "127.0.0.1:", "127.0.0.1:0", "127.0.0.1:65536", "127.0.0.1:91x", "[::1:9100", "[]:1"}) {
    INFO(bad);
    CHECK_THROWS_AS(parse_listen_address(bad), Error);
  }
}

TEST_CASE("the host service's exposition has each family once, with every instance's samples", "[metrics]") {
  json status = {{"state", "running"}, {"recovery", "on"}, {"recovery_state", {{"crashes", 1}}}};
  InstanceMetrics a("a"), b("b");
  std::string merged = merge_expositions({a.render(status), b.render(status),
                                          "# HELP immortal_up 1 while a supervisor protects the guest.\n"
                                          "# TYPE immortal_up gauge\nimmortal_up{guest=\"c\"} 0\n"});
  auto count = [&](const std::string& needle) {
    std::size_t n = 0;
    for (auto at = merged.find(needle); at != std::string::npos; at = merged.find(needle, at + 1)) ++n;
    return n;
  };
  CHECK(count("# TYPE immortal_up gauge\n") == 1);
  CHECK(count("# HELP immortal_crashes_total ") == 1);
  CHECK(count("# TYPE immortal_recovery_latency_seconds histogram\n") == 1);
  // The samples of one family stay together, right after its TYPE line.
  CHECK_THAT(merged, Catch::Contains("# TYPE immortal_up gauge\nimmortal_up{guest=\"a\"} 1\nimmortal_up{guest=\"b\"} 1\n"
                                     "immortal_up{guest=\"c\"} 0\n"));
  // Nothing is invented or lost: the sample lines are those of the parts.
  auto samples = [](const std::string& text) {
    std::size_t n = 0, start = 0;
    while (start < text.size()) {
      std::size_t end = text.find('\n', start);
      if (end == std::string::npos) end = text.size();
      if (end > start && text[start] != '#') ++n;
      start = end + 1;
    }
    return n;
  };
  CHECK(samples(merged) == samples(a.render(status)) + samples(b.render(status)) + 1);
  CHECK(merge_expositions({}).empty());
  CHECK(merge_expositions({"garbage without a family\n# HELP\n"}).find("garbage") == std::string::npos);
}
