// The hidden repair image, built from the healthy guest, in two parts:
//   initrd       the repair VM's initramfs (newc cpio, gzip): /init, the static repair
//                agent (repair-image/agent/), and /dev/console; nothing of the guest, so one
//                file per host and agent serves every instance (repair/shared_file.h)
//   the payload  a sealed memfd holding a newc archive (repair-image/protocol/payload.h):
//                repair.json (where guest RAM lies), profile/ (kallsyms, BTF, modules, VMCOREINFO
//                address) and healthy/ (the healthy copy of the kernel's text and read-only data)
// The repair VM sees the payload as a read-only PCI window and the inline agent maps it from a
// descriptor: nothing of it is copied into files or into the repair VM's initramfs. A new payload
// is written whenever the profile changes (a module loaded or unloaded), since symbols and the
// healthy copy change with it: into the window's other slot when it fits, so that the running
// repair VM loads it in place.
#pragma once

#include "base/unique_fd.h"
#include "repair/shared_file.h"
#include "engine/healthy_image.h"
#include "kernel/image_symbols.h"
#include "machine.h"

#include <memory>
#include <string>
#include <vector>

namespace immortal::vmm {

// What the host's files hold of the guest kernel's profile (repair/shared_kernel_files.h), which the
// payload then leaves out: the agents read those parts from the files (windows of the repair VM,
// descriptors of the inline agent), and the payload is the guest's own part (issue 20).
struct PayloadKernelPart {
  std::shared_ptr<const ImageSymbols> symbols;  // the kernel image's symbols as the host's file holds them
  std::uint64_t symbols_base = 0;               // where this boot has the image (its KASLR slide)
  std::string btf_digest;                       // the kernel's BTF, when the host's file holds it
  std::uint64_t btf_bytes = 0;
  // The kernel image's ORC tables, when the host's file holds this guest's (the supervisor
  // compared them with its memory): the agents read them there instead of the guest's memory.
  std::string orc_digest;
  std::uint64_t orc_bytes = 0;
};

// The digests of the host's kernel files a payload's agents read parts from ("" for a part the
// payload holds itself or the agents read from the guest).
struct KernelPartDigests {
  std::string symbols, btf, orc;
};

// What a payload leaves to the host's files, and why it keeps what it keeps.
struct KernelPartsFromHost {
  std::vector<std::string> names;  // "kernel BTF", "kernel image symbols", "kernel image unwind tables"
  std::vector<std::string> kept_why;
  KernelPartDigests digests;       // what the agents check those files by
};

struct RepairImage {
  std::string initrd;               // SHARED_DIR/initrd-v1-DIGEST.img, else DIR/initrd.img
  std::uint64_t initrd_bytes = 0;
  SharedFile initrd_file;           // held while the image lives, when it is the host's shared one
  std::string initrd_problem;       // why the shared one could not be had, if it could not
  UniqueFd payload;                 // sealed; its size is window_bytes: two slots, one payload
  std::uint64_t payload_bytes = 0;  // of the archive
  std::uint64_t payload_offset = 0; // where it lies: 0 or slot_bytes
  std::uint64_t slot_bytes = 0;     // a power of two, at least 1 MiB
  std::uint64_t window_bytes = 0;   // 2 * slot_bytes (a PCI window shows it whole)
  // What the agents read from the host's files rather than from the payload or the guest.
  KernelPartsFromHost from_host;
};

// The initramfs (the agent) and the payload from the instance's profile (profile_dir), the
// healthy copy and guest RAM's layout. The initramfs is the host's one for this agent in
// shared_dir (repair/shared_file.h: written by the first instance that needs it), else, with
// shared_dir empty or unusable, DIR/initrd.img. Throws Error on failure.
// part: what the host's files hold, which the payload leaves out when they hold it for this
// profile (checked against the profile's own bytes).
RepairImage build_repair_image(const std::string& dir, const std::string& shared_dir, const std::string& agent, const std::string& profile_dir,
                               const repair::HealthyImage& healthy, const Machine::RamFile& ram,
                               const PayloadKernelPart& part = {});

// A new payload for the same instance written into the image's other slot, and the old slot's
// pages given back: a running repair VM loads it in place (RepairWorker::reload). False, with the
// image unchanged, when it does not fit a slot (then a new image is built). Throws Error.
bool rewrite_repair_payload(RepairImage& image, const std::string& profile_dir, const repair::HealthyImage& healthy,
                            const Machine::RamFile& ram, const PayloadKernelPart& part = {});

// The healthy copy as the image's payload holds it now, read where it lies (the supervisor's
// plan validation checks restores against it): one copy of the kernel's code per instance, not
// one in the payload and another in the supervisor's heap. Safe to trust because only the
// supervisor writes the payload (the agents and the repair VM get read-only descriptions of it).
// Valid until the payload's slot changes (rewrite_repair_payload): take it again then. Throws Error.
std::shared_ptr<const repair::HealthyImage> healthy_in_payload(const RepairImage& image);

// The repair agent binary: $IMMORTAL_REPAIR_AGENT, else next to this executable (installed), else
// in the build tree (repair-image/ beside vmm/). Throws Error(ExitCode::bad_input) naming where it looked.
std::string find_repair_agent(const std::string& configured);

// The kernel built for the repair VM alone (scripts/build-repair-kernel: tinyconfig and what the
// agent needs, ≈ 1.3 MiB): $IMMORTAL_REPAIR_KERNEL, else next to this executable (installed:
// repair-vmlinuz), else in the build tree (repair-kernel/bzImage beside vmm/). "" when there is
// none: the repair VM then runs the guest's own kernel. Throws Error(ExitCode::bad_input) when
// $IMMORTAL_REPAIR_KERNEL names a file that cannot be read.
std::string find_repair_kernel();

}  // namespace immortal::vmm
