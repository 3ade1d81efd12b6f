// Parsing of command-line values that CLI11 does not know: a guest memory size (base/size.h's
// notation, bounded for a VM).
#pragma once

#include <cstdint>
#include <string>

namespace immortal::vmm {

// "512M", "2G", "2GiB", "1024" (MiB, as QEMU's -m) → bytes. Throws Error(ExitCode::usage)
// naming the option and the value for anything else, or a size outside 64 MiB .. 1 TiB.
std::uint64_t parse_memory_size(const std::string& text, const std::string& option = "--memory");

}  // namespace immortal::vmm
