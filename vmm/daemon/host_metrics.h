// The host service's one Prometheus endpoint (`immortal daemon --metrics-listen`): at each
// scrape, every running instance of the runtime directory (the daemon's and those started by
// hand) is asked for its exposition over its control socket, and the answers are merged into one
// (each family once, a `guest` label per instance). A guest the daemon means to protect but has
// no supervisor for right now (one being started again) shows as immortal_up 0, so an alert can
// fire on it. A supervisor that does not answer in time (busy taking a profile or with a crash)
// is shown as it last answered.
#pragma once

#include "control/metrics_server.h"

#include <map>
#include <mutex>
#include <set>
#include <string>

namespace immortal::vmm {

class HostMetrics {
 public:
  HostMetrics(const std::string& listen, std::string runtime_root);
  // The daemon's loop says which of its guests wait for a supervisor (by instance name).
  void set_unprotected(std::set<std::string> names);
  std::string render() const;

 private:
  std::string root_;
  mutable std::mutex mutex_;
  std::set<std::string> unprotected_;
  mutable std::map<std::string, std::string> last_;  // each instance's last answer

  MetricsServer server_;  // last: its threads call render() until it is destroyed
};

}  // namespace immortal::vmm
