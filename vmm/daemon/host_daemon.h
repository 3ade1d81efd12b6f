// `immortal daemon`: the host service. While it runs, every prepared domain of a libvirt
// connection is protected: at start it attaches to the running ones, then it follows libvirt's
// lifecycle events — a domain that starts, is restored (virsh restore) or migrates in gets a
// supervisor; one that stops, is saved or migrates away loses it (its supervisor ends by itself).
// Each supervisor is a child process (`immortal attach --libvirt`): one guest's trouble never
// touches another's, and one that dies while its domain runs is started again, with back-off.
// SIGTERM: every supervisor detaches (the domains run on) and the daemon exits 0. Under systemd
// (Type=notify) it reports READY once the first scan is done. docs/operator-guide.md, "The host
// service".
#pragma once

#include <string>
#include <vector>

namespace immortal::vmm {

struct DaemonOptions {
  std::string uri;                        // -c/--connect; empty: qemu:///system
  bool libvirt = true;                    // --no-libvirt: only our own autostart instances
  std::string runtime_dir;                // --runtime-dir, handed to every supervisor
  std::string config_dir;                 // --config-dir: where the definitions are
  std::string metrics_listen;             // the host's one Prometheus endpoint, every instance in it
  std::vector<std::string> protection;    // run's protection options, handed to every supervisor
  std::string self;                       // the immortal binary the supervisors run
};

// Runs until SIGTERM/SIGINT; returns the exit status.
int run_daemon(const DaemonOptions& options);

}  // namespace immortal::vmm
