// The guest of one campaign phase, with a raw records disk and a port for the workload's
// acknowledgements: our guest image or an operator's disk image run by an `immortal run --detach`
// supervisor, or a libvirt domain protected by `immortal attach --libvirt` (the disk and port
// added to it live). Spoken to as the CLI speaks to instances (control socket). Output of the
// commands it runs goes to the campaign's log.
#pragma once

#include "cli/commands.h"

#include <nlohmann/json.hpp>

#include <chrono>
#include <functional>
#include <string>
#include <vector>

namespace immortal::vmm {

// The records disk's serial number in a libvirt domain.
inline constexpr char kLibvirtRecordsSerial[] = "immortal-records";

struct CampaignPlan;
struct CampaignPhase;

struct GuestCommandResult {
  bool ran = false;      // the agent ran it (else `error` says why not)
  int exit_code = -1;
  std::string out, error;
};

class CampaignGuest {
 public:
  CampaignGuest(const GlobalOptions& global, const CampaignPlan& plan, const CampaignPhase& phase, std::string out_dir,
                std::string log_path);

  const std::string& name() const { return name_; }
  const std::string& disk() const { return disk_; }  // the records disk (a host file)
  // The records disk's virtio serial number, by which the guest finds it.
  std::string records_serial() const;
  // The serial console's log ("" for a libvirt domain: libvirt keeps its console).
  const std::string& console_log() const { return console_; }
  // The host file of the workload's acknowledgements (its own virtio-serial port).
  const std::string& acks_log() const { return acks_; }

  // Boots the guest (a fresh records disk the first time), waits for its agent and, with
  // recovery on, for crash interception to be armed and the repair path ready. Throws Error.
  void start(bool fresh_disk);
  // Powers it off (forced); quiet when it is not running.
  void stop();
  // A new boot after the guest hung or its supervisor ended: stop, then start on the same disk.
  void restart();
  bool running() const;

  GuestCommandResult sh(const std::string& script, std::chrono::seconds timeout);
  // The same with positional parameters ($1 …): each at most 4096 bytes and 250 of them (the
  // agent's limits), which is how larger data crosses (guest_files.h).
  GuestCommandResult sh(const std::string& script, const std::vector<std::string>& args, std::chrono::seconds timeout);
  // Asks the supervisor to inject a fault of ours or LKDTM's; the error when it refused.
  std::string inject(const std::string& fault);
  void unquarantine_all();
  nlohmann::json status() const;
  // Waits until the agent says hello from a boot other than `old_boot_id`; false on timeout.
  bool wait_for_new_boot(const std::string& old_boot_id, std::chrono::seconds timeout);
  // Waits until a crash can be caught and analysed (armed, repair VM ready); false on timeout.
  bool wait_until_protected(std::chrono::seconds timeout);
  std::string boot_id() const;

 private:
  int run_self(const std::vector<std::string>& args) const;
  // Polls status until `condition` holds; false on timeout.
  bool wait_for_status(const std::function<bool(const nlohmann::json&)>& condition, std::chrono::seconds timeout) const;
  bool plan_disk() const;
  bool libvirt() const;
  // run's and attach's options that protect the guest as the phase wants.
  std::vector<std::string> protection_args() const;
  void start_own_vm(bool fresh_disk);
  void start_libvirt();
  void power_off_libvirt();

  const GlobalOptions& global_;
  const CampaignPlan& plan_;
  bool recovery_;
  std::string name_, out_dir_, log_, disk_, console_, acks_, overlay_;
};

}  // namespace immortal::vmm
