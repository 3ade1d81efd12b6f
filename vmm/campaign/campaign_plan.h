// A fault campaign's plan (`immortal campaign PLAN`): a small TOML file naming the faults to
// inject, how often, the guest, the workload, recovery's settings and the stock-kernel baselines
// to run beside it. The file is the user's: every value is checked, and a bad one is an
// Error(ExitCode::bad_input) naming the file, line and key. docs/campaigns.md describes the format.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace immortal::vmm {

// Where a fault comes from. Each becomes injections of one or more types.
enum class FaultSource {
  driver,         // our fault driver's classes (immortal inject NAME CLASS)
  lkdtm,          // the kernel's LKDTM crash tests (immortal inject NAME lkdtm:TYPE)
  fault_inject,   // the kernel's fault-injection framework: fail_function, failslab, fail_page_alloc
  module,         // a user's own module and the command that makes it crash
};
const char* to_string(FaultSource source);

// One [[faults]] table.
struct FaultSpec {
  FaultSource source = FaultSource::driver;
  std::vector<std::string> types;  // driver classes, LKDTM types, fault-injection kinds, or the module's name
  int count = 1;                   // injections of each type
  // fault_inject: the functions fail_function makes fail (kind "fail_function"), the task
  // filter's command, and for every kind the command that exercises the code under it.
  std::vector<std::string> functions;
  int probability = 100;           // percent of calls that fail while the trigger runs
  int times = 1;                   // failures at most per injection (-1: no limit)
  // module (and fault_inject): shell commands run in the guest. setup once per guest boot
  // (e.g. "modprobe mydrv"), trigger for each injection (it may crash the guest).
  std::string setup, trigger;
  // A guest command that finishes at once while the device works (it takes the driver's locks:
  // a read of its device). Run after each injection: still running after 10 s, the device hung.
  // Default for source = "driver": a read of our fault driver's device; else none.
  std::string probe;
  // module (and fault_inject): host files copied into the guest at every boot, before setup, to
  // /run/immortal-campaign/NAME (guest_files.h): a user's own module, a program that triggers it.
  // Relative paths are the working directory's, as kernel, initrd and disk are.
  std::vector<std::string> files;
  bool in_baselines = true;        // false: only the immortal phase runs this table's faults
};

struct Baselines {
  // Stock-kernel runs of the same plan with recovery off: panic_on_oops values, each one run
  // (1: the oops panics and the guest reboots; 0: the oops kills the task and the kernel goes on).
  std::vector<int> panic_on_oops = {1, 0};
  int per_type = 1;  // injections of each type in each baseline (the full count is long: reboots)
};

struct CampaignPlan {
  std::string name;
  std::string path;  // the plan file
  std::string digest;  // of its text: a resumed campaign must run the same plan
  // The guest: our own image (kernel and initrd, default the built one), or an operator's disk
  // image its firmware boots (`disk`: the campaign runs it on a copy-on-write overlay, so the
  // image itself is never written), with a records disk added either way.
  std::string kernel, initrd, disk, memory = "512M";
  int vcpus = 2;
  // Or a libvirt domain (prepared with `immortal prepare`, booting a kernel with our agent): the
  // campaign powers it off and on for each phase, adds the records disk and the workload's port
  // to it live and protects it with `immortal attach --libvirt`.
  std::string libvirt_domain, libvirt_uri;  // uri empty: qemu:///system
  // Recovery's settings (run's options of the same names).
  std::string repair = "vm", quarantine = "function";
  int verify_window_s = 5;
  int outcome_timeout_s = 180;  // from the trigger to a known outcome, per injection
  int bundle_keep = 20;         // bundles kept per phase guest (run --bundle-keep; 0: all)
  // The data workload: a record written, fsynced and acknowledged every interval (0: none).
  int record_interval_ms = 50;
  Baselines baselines;
  std::vector<FaultSpec> faults;
};

// One injection: a fault of one type, the n-th of its kind.
struct Injection {
  int index = 0;          // 0-based, in the order they run
  FaultSource source = FaultSource::driver;
  std::string type;       // "null-deref", "BUG", "failslab", the module's name
  std::string fault;      // what it is called in results: "null-deref", "lkdtm:BUG", "failslab:TRIGGER"…
  int spec = 0;           // its [[faults]] table
};

// Throws Error(ExitCode::bad_input) for a file that cannot be read or parsed, or a bad value.
CampaignPlan read_campaign_plan(const std::string& path);
CampaignPlan parse_campaign_plan(const std::string& text, const std::string& path);

// Every injection of the plan, round by round (the first of each type, then the second…), so
// that types mix over time. per_type > 0 caps each type's count and leaves out the tables with
// baselines = false (the baselines).
std::vector<Injection> expand_injections(const CampaignPlan& plan, int per_type = 0);

}  // namespace immortal::vmm
