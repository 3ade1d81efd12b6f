// Where a RAM backend's bytes sit in guest-physical memory, read from what QEMU itself says:
// the flat view of the system address space that `info mtree -f` prints. A VM we did not start
// (a libvirt domain: any machine type, any max-ram-below-4g) has a layout we cannot compute.
#pragma once

#include "memory/shared_ram.h"

#include <string>
#include <string_view>
#include <vector>

namespace immortal::qemu {

// The ranges of memory region `region` (a memory backend's id, e.g. "pc.ram") in the first flat
// view rooted at "system", merged where both the guest-physical and the file offsets continue,
// sorted by address. Throws Error(ExitCode::qemu) when the text has no such view or no range of
// that region, or a range that is malformed or overlaps another.
std::vector<RamSegment> ram_layout_from_memory_tree(std::string_view info_mtree, const std::string& region);

}  // namespace immortal::qemu
