// A name for a block of bytes: the XXH3-128 of its content as 32 hex digits. Equal digests name
// equal content; the host's shared kernel files are named by it (vmm/repair/shared_kernel_files.h).
// Not a security boundary: whoever uses a file by its name still compares the bytes.
#pragma once

#include <cstdint>
#include <span>
#include <string>

namespace immortal {

std::string content_digest(std::span<const std::uint8_t> bytes);

}  // namespace immortal
