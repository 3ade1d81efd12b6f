// The `immortal` subcommands. Each returns the process exit status; failures throw Error.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace immortal::vmm {

struct GlobalOptions {
  std::string runtime_dir;  // --runtime-dir; empty: runtime_root() decides
  std::string config_dir;   // --config-dir; empty: config_root() decides (saved definitions)
};

struct RunOptions {
  std::string name = "guest";
  bool detach = false;
  bool console = false;
  std::string kernel, initrd, append;
  std::vector<std::string> disks;  // --disk PATH[,format=qcow2|raw][,readonly], in order (the first boots)
  std::vector<std::string> nets;   // --net user[,hostfwd=…] | tap=IFNAME | bridge=BR
  std::vector<std::string> channels;  // --channel NAME,path=FILE
  std::string memory = "512M";
  int vcpus = 2;
  std::string accel = "auto";
  std::string qemu = "qemu-system-x86_64";
  std::string qemu_user;  // the account QEMU drops to when started as root ("": nobody)
  std::string backend = "qemu";
  std::string console_log;
  int boot_timeout_s = 60;
  std::string recovery = "on";
  std::string on_crash = "freeze";      // recovery off: freeze (kept for inspection) | reboot (as panic=N)
  std::vector<std::string> no_recover;  // crash kinds recovery must not repair
  std::string recovery_limit;           // COUNT/SECONDS
  int hang_timeout_s = 30;
  int verify_timeout_s = 20;
  int verify_window_s = 10;
  std::string quarantine = "function";
  std::string event_log;
  std::string bundle_dir;               // empty: see run_command (env, /var/crash for root, user state dir)
  int bundle_keep = 20;
  std::string bundle_max_size = "20G";
  bool bundle_compress = false;
  std::string bundle_memory = "kernel";  // kernel | all
  std::string repair = "vm";            // vm | inline: where crashes are analysed
  std::string repair_fallback = "inline";  // inline | reboot
  int repair_timeout_ms = 5000;
  std::string repair_vm_memory = "auto";
  std::string repair_agent;
  std::string repair_vm_kernel;
  bool repair_cross_check = false;
  bool repair_vm_shared = false;        // one repair VM for the guests of one kernel on this host
  std::string metrics_listen;           // ADDR:PORT of the Prometheus endpoint; empty: none
  std::string on_event;                 // a shell command run for every event (event JSON on stdin)
};

int run_command(const GlobalOptions& global, const RunOptions& options);
// The guest image built by scripts/build-guest-image (vmlinuz, initrd.img): $IMMORTAL_GUEST_DIR,
// else the build directory this binary was configured with.
std::string guest_image_dir();
// The run options with every path absolute and every file and device checked (the name too),
// as `run` uses them and `define` keeps them. Throws Error naming what is wrong.
RunOptions checked_run_options(const RunOptions& given);
// Saved definitions (instance_definitions.h): define saves run's options; start runs them (as
// run --detach unless foreground); autostart marks them for the host service; undefine forgets.
int define_command(const GlobalOptions& global, const RunOptions& options);
int start_command(const GlobalOptions& global, const std::string& name, bool foreground, bool console);
int autostart_command(const GlobalOptions& global, const std::string& name, bool enable);
int undefine_command(const GlobalOptions& global, const std::string& name);
// all: also the defined instances that are not running.
int list_command(const GlobalOptions& global, bool as_json, bool all = false);
int status_command(const GlobalOptions& global, const std::string& name, bool as_json);
int exec_command(const GlobalOptions& global, const std::string& name, const std::vector<std::string>& argv,
                 int timeout_s);
// inject --wait: return once the crash's outcome is known (recovered, rebooted), --json: as JSON.
struct InjectWait {
  bool wait = false;
  bool json = false;
  int timeout_s = 300;
};
int inject_command(const GlobalOptions& global, const std::string& name, const std::string& fault_class,
                   const InjectWait& wait);
int list_faults_command();
// `immortal ps|lsmod|dmesg NAME`: the guest kernel's tasks, modules or log, read by the host
// from the guest's memory (part: tasks, modules, dmesg).
int introspect_command(const GlobalOptions& global, const std::string& name, const std::string& part, bool as_json);
int dump_command(const GlobalOptions& global, const std::string& name, const std::string& file);
int unquarantine_command(const GlobalOptions& global, const std::string& name, const std::vector<std::string>& functions,
                         bool all);
// follow: then every new event as it happens, until the instance ends.
int events_command(const GlobalOptions& global, const std::string& name, bool as_json, bool follow);
// `immortal bundle NAME`: a diagnosis bundle of the running guest now; prints its path.
int bundle_command(const GlobalOptions& global, const std::string& name, int timeout_s, bool as_json);
// Stops the instance: powers its VM off, or (a VM immortal does not own, unless shutdown) lets go of it.
int stop_command(const GlobalOptions& global, const std::string& name, bool force, bool shutdown, int timeout_s);
// `immortal attach NAME`: a new supervisor for an instance whose VM runs on without one.
int attach_command(const GlobalOptions& global, const std::string& name, bool detach);
// `immortal attach --libvirt DOMAIN`: supervise a running, prepared libvirt domain as instance
// `instance` (default: the domain's name), protected as `protection` says (run's options).
int attach_libvirt_command(const GlobalOptions& global, const std::string& domain, const std::string& uri,
                           const std::string& instance, const RunOptions& protection, bool detach);
// `immortal console NAME`: the serial console on this terminal (Ctrl-] detaches).
int console_command(const GlobalOptions& global, const std::string& name);
// `immortal upgrade NAME`: the running supervisor hands the instance to BINARY (upgrade.h).
// prepare/unprepare DOMAIN: make a libvirt domain's definition protectable, or undo that. The
// difference is shown first and asked for unless `yes`.
int prepare_command(const std::string& domain, const std::string& uri, bool yes);
int unprepare_command(const std::string& domain, const std::string& uri, bool yes);
// `immortal list --connect URI`: a read-only view of a libvirt host's domains and their protection.
int list_libvirt_command(const std::string& uri, bool as_json);
// `immortal campaign PLAN`: a fault campaign (vmm/campaign/campaign_runner.h); `report_dir`: only
// the report of a campaign's results; `dry_run`: list the injections the plan makes.
struct CampaignCommand {
  std::string plan, output, report_dir;
  bool restart = false, dry_run = false;
};
int campaign_command(const GlobalOptions& global, const CampaignCommand& command);
int upgrade_command(const GlobalOptions& global, const std::string& name, const std::string& binary, int timeout_s);

}  // namespace immortal::vmm
