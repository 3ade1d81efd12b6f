// Shared memory the host maps and another process (QEMU, a repair agent) maps too: a memfd
// whose size is sealed once set. A peer that could shrink it would turn the host's next access
// to the lost pages into SIGBUS — a crash of the supervisor that a guest's QEMU (or anything
// that got the descriptor) could cause.
#pragma once

#include "base/unique_fd.h"

#include <cstdint>
#include <string>

namespace immortal {

// memfd_create(name) sized to `bytes`, sealed against shrinking, growing and further sealing
// (F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL); close-on-exec. Throws Error(failure).
UniqueFd sealed_memfd(const std::string& name, std::uint64_t bytes);

}  // namespace immortal
