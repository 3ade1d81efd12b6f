// The driver functions recovery has quarantined (patched to return -EIO at once), with the
// bytes they had, so that `immortal unquarantine` can put them back. Kept in the instance
// directory (quarantine.json). A reboot or a module reload makes entries stale: a function is
// only restored while the guest still holds exactly our patch there.
#pragma once

#include "engine/repair_plan.h"
#include "kernel/kernel.h"
#include "machine.h"

#include <nlohmann/json.hpp>

#include <string>
#include <vector>

namespace immortal::vmm {

struct QuarantineEntry {
  std::string module, function;
  std::uint64_t address = 0;              // where the patch is
  std::vector<std::uint8_t> original, patch;
  std::uint64_t crash = 0;
  std::string time;
};

// A module whose refcount recovery raised (--quarantine driver), so that it cannot be unloaded
// while its entry points return at once.
struct PinnedModule {
  std::string module;
  std::uint64_t refcnt = 0;  // the address of its struct module's refcnt
  std::uint64_t crash = 0;
};

class QuarantineList {
 public:
  explicit QuarantineList(std::string path) : path_(std::move(path)) {}
  void add(const repair::RepairPlan& plan, std::uint64_t crash, const std::string& time);
  // Restores the named functions (all of them when names is empty); the machine must be
  // paused. Returns what was restored and what was dropped as stale, one line each. Throws
  // Error(ExitCode::usage) for a name that is not quarantined.
  std::vector<std::string> release(Machine& machine, const Kernel& kernel, const std::vector<std::string>& names);
  // The guest rebooted: its code is fresh, nothing is patched any more.
  void clear();
  // Reads back what an earlier supervisor of this instance saved (a restart or an upgrade).
  // Throws Error(ExitCode::bad_input) for a damaged file.
  void load();
  bool empty() const { return entries_.empty() && pins_.empty(); }
  const std::vector<PinnedModule>& pins() const { return pins_; }
  const std::vector<QuarantineEntry>& entries() const { return entries_; }
  nlohmann::json to_json() const;

 private:
  void save() const;
  std::string path_;
  std::vector<QuarantineEntry> entries_;
  std::vector<PinnedModule> pins_;
};

}  // namespace immortal::vmm
