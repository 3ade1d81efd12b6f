// One reading of a size for every option that takes one (--memory, --repair-vm-memory,
// --bundle-max-size): a whole number and an optional unit K, M, G or T, powers of 1024, in
// either case and with an optional "B" or "iB" (512M, 2GiB, 1t). A bare number is MiB, as
// QEMU's -m reads it. Anything else is a usage error naming the option.
#pragma once

#include <cstdint>
#include <string>

namespace immortal {

// `what` names the value in the message ("memory size").
std::uint64_t parse_size(const std::string& text, const std::string& option, const std::string& what = "size");

}  // namespace immortal
