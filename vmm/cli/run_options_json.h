// The `run` options as JSON: kept in state.json (a later `attach` reads them back) and in saved
// definitions. Fields a reader does not know keep their defaults, so older and newer binaries
// read each other's.
#pragma once

#include "cli/commands.h"

#include <nlohmann/json.hpp>

namespace immortal::vmm {

NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE_WITH_DEFAULT(RunOptions, name, console, kernel, initrd, append, disks, nets, channels, memory, vcpus, accel,
                                                qemu, qemu_user, backend, console_log, boot_timeout_s, recovery, on_crash, no_recover,
                                                recovery_limit, hang_timeout_s, verify_timeout_s, verify_window_s,
                                                quarantine, event_log, bundle_dir, bundle_keep, bundle_max_size,
                                                bundle_compress, bundle_memory, repair, repair_fallback,
                                                repair_timeout_ms, repair_vm_memory, repair_agent, repair_vm_kernel,
                                                repair_cross_check, repair_vm_shared, metrics_listen, on_event)

}  // namespace immortal::vmm
