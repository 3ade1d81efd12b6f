// One zstd frame of a whole buffer: how the supervisor keeps its profile (profile/packed_profile.h)
// and how the repair payload carries the profile's files (formats.md, "Repair image").
#pragma once

#include <cstddef>
#include <string>
#include <string_view>

namespace immortal {

// Throws Error(ExitCode::failure) if zstd fails.
std::string zstd_pack(std::string_view bytes, int level);
// The frame's content, which must say its size and be at most max bytes. Throws
// Error(ExitCode::bad_input) naming what for anything else: frames may come from elsewhere.
std::string zstd_unpack(std::string_view frame, std::size_t max, std::string_view what);

}  // namespace immortal
