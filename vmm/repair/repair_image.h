// The hidden repair image, built from the healthy guest: an initramfs (newc cpio, uncompressed
// so the repair VM unpacks it at memory speed) holding
//   /init          the static repair agent (repair-image/agent/)
//   /repair.json   where guest RAM lies in its PCI window, where the inputs are
//   /profile/      the healthy-guest profile (kallsyms, BTF, modules, VMCOREINFO address)
//   /healthy/      the healthy copy of the kernel's text and read-only data
// It boots with the guest's own kernel. Rebuilt whenever the profile changes (a module loaded or
// unloaded), since symbols and the healthy copy change with it. The inline repair process reads
// the same files from the directory they are staged in.
#pragma once

#include "engine/healthy_image.h"
#include "machine.h"

#include <string>

namespace immortal::vmm {

struct RepairImage {
  std::string dir;          // staging directory: profile/, healthy/, repair.json, inline.json
  std::string initrd;       // dir/initrd.img
  std::uint64_t bytes = 0;  // of the initrd
};

// Stages the inputs in dir (replacing what was there) and writes the initrd. profile_dir: the
// instance's profile. Throws Error on failure.
RepairImage build_repair_image(const std::string& dir, const std::string& agent, const std::string& profile_dir,
                               const repair::HealthyImage& healthy, const Machine::RamFile& ram);

// The repair agent binary: $IMMORTAL_REPAIR_AGENT, else next to this executable (installed), else
// in the build tree (repair-image/ beside vmm/). Throws Error(ExitCode::bad_input) naming where it looked.
std::string find_repair_agent(const std::string& configured);

}  // namespace immortal::vmm
