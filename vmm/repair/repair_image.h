// The hidden repair image, built from the healthy guest, in two parts:
//   initrd.img   the repair VM's initramfs (newc cpio, uncompressed): /init, the static repair
//                agent (repair-image/agent/), and /dev/console; nothing of the guest
//   the payload  a sealed memfd holding a newc archive (repair-image/protocol/payload.h):
//                repair.json (where guest RAM lies), profile/ (kallsyms, BTF, modules, VMCOREINFO
//                address) and healthy/ (the healthy copy of the kernel's text and read-only data)
// The repair VM sees the payload as a read-only PCI window and the inline agent maps it from a
// descriptor: nothing of it is copied into files or into the repair VM's initramfs. Rebuilt
// whenever the profile changes (a module loaded or unloaded), since symbols and the healthy copy
// change with it.
#pragma once

#include "base/unique_fd.h"
#include "engine/healthy_image.h"
#include "machine.h"

#include <string>

namespace immortal::vmm {

struct RepairImage {
  std::string initrd;               // DIR/initrd.img
  std::uint64_t initrd_bytes = 0;
  UniqueFd payload;                 // the payload archive, sealed; its size is window_bytes
  std::uint64_t payload_bytes = 0;  // of the archive
  std::uint64_t window_bytes = 0;   // a power of two (a PCI window shows it whole), at least 1 MiB
};

// Writes DIR/initrd.img (the agent) and the payload from the instance's profile (profile_dir),
// the healthy copy and guest RAM's layout. Throws Error on failure.
RepairImage build_repair_image(const std::string& dir, const std::string& agent, const std::string& profile_dir,
                               const repair::HealthyImage& healthy, const Machine::RamFile& ram);

// The repair agent binary: $IMMORTAL_REPAIR_AGENT, else next to this executable (installed), else
// in the build tree (repair-image/ beside vmm/). Throws Error(ExitCode::bad_input) naming where it looked.
std::string find_repair_agent(const std::string& configured);

}  // namespace immortal::vmm
