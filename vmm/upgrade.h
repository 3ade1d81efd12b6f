// `immortal upgrade NAME [--binary PATH]`: hands a running instance to another immortal binary
// without stopping its guest. The running supervisor lets go (state saved, VM connections and the
// instance lock released; the VM runs on, its breakpoints still set), starts
// `PATH attach NAME --detach` and waits for it to have re-armed interception. If it does not in
// time — it failed to start, died, or stalls — it is killed and the old supervisor takes the
// instance back: the rollback. docs/operator-guide.md, "Restarts and upgrades".
#pragma once

#include <chrono>
#include <functional>
#include <string>

namespace immortal::vmm {

struct UpgradeOutcome {
  bool upgraded = false;
  int new_supervisor_pid = 0;
  std::string detail;  // what the new supervisor said, or why it was rolled back
};

// release: let go of the instance (the caller's supervisor); take_back: attach again (rollback).
// armed_required: with recovery on, the new supervisor must report interception armed.
UpgradeOutcome hand_over(const std::string& binary, const std::string& runtime_root, const std::string& name,
                         std::chrono::seconds deadline, bool armed_required, const std::function<void()>& release,
                         const std::function<void()>& take_back, const std::function<void(const std::string&)>& say);

// Waits until process `pid` has exited (gone, or a zombie nobody reaped yet); false if it is still
// running at the deadline. The `upgrade` command uses it so that, once it says "upgraded", the old
// binary no longer runs.
bool wait_for_exit(int pid, std::chrono::seconds deadline);

}  // namespace immortal::vmm
