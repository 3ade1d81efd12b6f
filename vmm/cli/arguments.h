// Parsing of command-line values that CLI11 does not know (sizes in QEMU's notation).
#pragma once

#include <cstdint>
#include <string>

namespace immortal::vmm {

// "512M", "2G", "2GiB", "1024" (MiB, as QEMU's -m) → bytes. Throws Error(ExitCode::usage)
// naming the value for anything else, or a size outside 64 MiB .. 1 TiB.
std::uint64_t parse_memory_size(const std::string& text);

}  // namespace immortal::vmm
