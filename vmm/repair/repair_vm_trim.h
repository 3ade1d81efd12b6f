// Gives back the host memory of pages the repair VM's kernel has free (issue 20, "a repair VM
// that costs little"). A booted repair VM keeps the host pages of everything it ever touched:
// the initramfs it unpacked and freed, the kernel image's decompression, the agent's scratch
// while it parsed the profile (≈ 26 of its 143 MiB, measured with drgn), and pages it zeroed
// (its .bss: 17 MiB in Debian's 6.1) or never filled (≈ 22 MiB more). The kernel of a
// paused VM keeps nothing in a free buddy block (its bookkeeping lives in struct page), so
// those pages can be punched out of the VM's RAM file; the kernel reads zeros there the next
// time it allocates one, as it would from any fresh page. (virtio-balloon's free page
// reporting does the same with the kernel's help; it needs modules the repair VM does not have.)
//
// All-zero pages go too, whatever they are for the kernel: a hole reads as zeros. (A page punched
// fills again when the VM next touches it: done when the VM is ready, not after each analysis.)
//
// Which pages are free is read the way a bundle's snapshot finds them: the repair VM's own
// kernel (its VMCOREINFO note, where the agent says it is; symbols and types from its own
// memory) and the sandboxed page-class agent reading its struct page array. The repair VM is
// untrusted like the guest it analyses: at worst it misleads us into punching its own pages.
#pragma once

#include "base/clock.h"
#include "dump/memory_snapshot.h"
#include "machine.h"

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

namespace immortal::vmm {

// The repair VM's free pages (PageClass::free) and the rest `kernel`, for a paused VM whose
// kernel keeps VMCOREINFO at [paddr, paddr + size). agent: the page-class agent's binary.
// Throws Error when the kernel cannot be read or the agent does not answer by the deadline.
RamClasses repair_vm_free_pages(const std::string& agent, Machine& vm, std::uint64_t vmcoreinfo_paddr,
                                std::uint32_t vmcoreinfo_size, Deadline deadline);

// Pages of ram's file that are all zeros, as runs of file offsets. A hole of a memory file reads
// as zeros and is filled on the next write, so such a page can be given back whatever the VM's
// kernel thinks of it (a zeroed .bss, an unused page table): only the page is different, never
// what the VM reads. Only the file's data is read (SEEK_DATA), without filling holes.
std::vector<std::pair<std::uint64_t, std::uint64_t>> zero_page_runs(const Machine::RamFile& ram);

// Punches the free pages of classes, and the runs given, out of ram's file (whole pages; the
// file keeps its size). Only for a VM that stayed paused since both were read. Returns the bytes
// given back.
std::uint64_t punch_free_pages(const Machine::RamFile& ram, const RamClasses& classes,
                               const std::vector<std::pair<std::uint64_t, std::uint64_t>>& zero_runs = {});

}  // namespace immortal::vmm
