#include "cli/option_sets.h"

#include "machine_backends.h"
#include "recovery/recovery_policy.h"

namespace immortal::vmm {

// How a guest is protected (recovery, bundles, repair): the same for a guest we boot (run) and
// for a libvirt domain we attach to (attach --libvirt).
void add_protection_options(CLI::App* cmd, RunOptions& o) {
  cmd->add_option("--recovery", o.recovery, "on or off: off lets the stock kernel's crash behaviour show")
      ->check(CLI::IsMember({"on", "off"}));
  cmd->add_option("--on-crash", o.on_crash,
                  "with --recovery off, a crashed guest is: freeze (kept stopped for inspection, the default) or reboot "
                  "(after its bundle, as a stock kernel with panic=N reboots itself)")
      ->check(CLI::IsMember({"freeze", "reboot"}));
  const auto& kinds = vmm::RecoveryPolicy::recoverable_kinds();
  cmd->add_option("--no-recover", o.no_recover, "a crash kind recovery must not repair (oops, bug, warn, panic, text-corruption, soft-lockup, hung-task, stack-overflow); repeatable")
      ->check(CLI::IsMember(std::vector<std::string>(kinds.begin(), kinds.end())));
  cmd->add_option("--recovery-limit", o.recovery_limit, "at most COUNT recoveries in SECONDS, then reboot (default: 20/600)");
  cmd->add_option("--hang-timeout", o.hang_timeout_s, "seconds without an agent heartbeat before the guest counts as hung (default: 30)")
      ->check(CLI::Range(3, 86400));
  cmd->add_option("--verify-timeout", o.verify_timeout_s, "seconds for a recovered guest to prove it is healthy (default: 20)")
      ->check(CLI::Range(1, 3600));
  cmd->add_option("--verify-window", o.verify_window_s,
                      "seconds a recovered guest is watched before it counts as recovered: no task waiting on a dead "
                      "lock owner, no lockup or stall report, RCU advancing (default: 10)")
      ->check(CLI::Range(0, 3600));
  cmd->add_option("--event-log", o.event_log, "also append the event log (JSON lines) to this file");
  cmd->add_option("--metrics-listen", o.metrics_listen,
                  "serve Prometheus metrics at http://ADDR:PORT/metrics, e.g. 127.0.0.1:9100 (default: off)");
  cmd->add_option("--on-event", o.on_event,
                  "run this shell command for every event, the event as a JSON line on its stdin "
                  "(IMMORTAL_EVENT, IMMORTAL_INSTANCE set; output to the instance's hooks.log)");
  cmd->add_option("--bundle-dir", o.bundle_dir,
                      "where crash bundles go (default: $IMMORTAL_BUNDLE_DIR/NAME, /var/crash/immortal/NAME for root, else ~/.local/state/immortal/bundles/NAME)");
  cmd->add_option("--bundle-keep", o.bundle_keep, "keep at most N bundles, oldest removed first (default: 20; 0: no limit)")
      ->check(CLI::Range(0, 1000000));
  cmd->add_option("--bundle-max-size", o.bundle_max_size, "keep bundles within SIZE in total, e.g. 5G (default: 20G; 0: no limit)");
  cmd->add_flag("--bundle-compress", o.bundle_compress, "write each bundle as one NAME.tar.zst file");
  cmd->add_option("--bundle-memory", o.bundle_memory,
                      "kernel: the pages a kernel dump needs (makedumpfile level 31, short pause); all: every non-zero page")
      ->check(CLI::IsMember({"kernel", "all"}));
  cmd->add_option("--quarantine", o.quarantine,
                      "what a recovered crash quarantines: function (the entry point that crashed, default) or "
                      "driver (every entry point of the driver at once)")
      ->check(CLI::IsMember({"function", "driver"}));
  cmd->add_option("--repair", o.repair,
                      "where crashes are analysed: vm (the hidden repair VM, default) or inline (a sandboxed host process)")
      ->check(CLI::IsMember({"vm", "inline"}));
  cmd->add_option("--repair-fallback", o.repair_fallback,
                      "when the repair VM is missing, booting, dead or too slow: inline (default) or reboot")
      ->check(CLI::IsMember({"inline", "reboot"}));
  cmd->add_option("--repair-timeout", o.repair_timeout_ms, "milliseconds the repair engine has for one crash (default: 5000)")
      ->check(CLI::Range(50, 600000));
  cmd->add_option("--repair-vm-memory", o.repair_vm_memory, "memory of the repair VM: a size, or auto (the default: 160 MiB, three times its inputs, the profile and the healthy copy, and twice the page tables of the guest's RAM window)");
  cmd->add_option("--repair-agent", o.repair_agent, "the immortal-repair-agent binary (default: next to immortal)");
  cmd->add_option("--repair-vm-kernel", o.repair_vm_kernel,
                      "kernel of the repair VM (default: the guest's --kernel, else the built guest image's)");
  cmd->add_flag("--repair-vm-shared", o.repair_vm_shared,
                "one repair VM for every guest of the same kernel on this host, each in a slot of its own (up to 8; "
                "the others get their own VM), instead of a VM per guest");
  cmd->add_flag("--repair-cross-check", o.repair_cross_check,
                    "also analyse every crash in the other mode and report whether both agree (event repair-mismatch)");
  cmd->add_option("--boot-timeout", o.boot_timeout_s, "seconds to wait for the agent's hello: at start (else the run fails) and after every reboot (else the guest is reset again, with back-off) (default: 60)")
      ->check(CLI::Range(1, 3600));
}

void add_machine_options(CLI::App* cmd, RunOptions& o) {
  cmd->add_option("-n,--name", o.name, "instance name (default: guest)");
  cmd->add_option("--kernel", o.kernel, "guest kernel (default: the built guest image)");
  cmd->add_option("--initrd", o.initrd, "guest initramfs (default: the built guest image)");
  cmd->add_option("--append", o.append, "kernel command line (default: console=ttyS0)");
  cmd->add_option("--disk", o.disks,
                  "a virtio disk: PATH[,format=qcow2|raw][,readonly] (a comma in PATH is ,,); repeatable, the first "
                  "is the boot disk: without --kernel the guest boots its own boot loader from it");
  cmd->add_option("--net", o.nets,
                  "a virtio network interface: user[,hostfwd=tcp::HOSTPORT-:GUESTPORT]…, tap=IFNAME or bridge=BRIDGE; "
                  "repeatable");
  cmd->add_option("--channel", o.channels,
                  "a named virtio-serial port whose output is appended to a host file: NAME,path=FILE (the guest "
                  "finds it by NAME in /sys/class/virtio-ports/*/name); repeatable");
  cmd->add_option("-m,--memory", o.memory, "guest RAM, e.g. 512M, 2G (default: 512M)");
  cmd->add_option("--vcpus", o.vcpus, "number of vCPUs (default: 2)")->check(CLI::Range(1, 64));
  cmd->add_option("--accel", o.accel, "auto, kvm or tcg (default: auto, probes KVM's speed)")
      ->check(CLI::IsMember({"auto", "kvm", "tcg"}));
  cmd->add_option("--qemu", o.qemu, "QEMU binary (default: qemu-system-x86_64)");
  cmd->add_option("--qemu-user", o.qemu_user,
                  "when started as root, the account QEMU runs as once it has opened its devices (QEMU's -runas; "
                  "default: nobody; root keeps root)");
  cmd->add_option("--backend", o.backend, "what runs the VM (default: qemu)")->check(CLI::IsMember(machine_backend_names()));
  cmd->add_option("--console-log", o.console_log, "serial console log file (default: in the runtime dir)");
}

std::vector<std::string> protection_arguments(int argc, char** argv, const std::string& subcommand) {
  std::vector<std::string> out;
  int i = 1;
  while (i < argc && argv[i] != subcommand) ++i;
  for (++i; i < argc; ++i) {
    std::string a = argv[i];
    bool with_value = a == "-c" || a == "--connect" || a == "--metrics-listen";
    if (with_value) {
      ++i;
      continue;
    }
    if (a.starts_with("--connect=") || a.starts_with("--metrics-listen=") || a == "--no-libvirt") continue;
    out.push_back(a);
  }
  return out;
}

}  // namespace immortal::vmm
