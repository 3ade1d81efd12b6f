// One zstd frame of a whole buffer: how the supervisor keeps its profile (profile/packed_profile.h)
// and how the repair payload carries the profile's files (formats.md, "Repair image").
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>

namespace immortal {

// Throws Error(ExitCode::failure) if zstd fails.
std::string zstd_pack(std::string_view bytes, int level);
// The frame's content, which must say its size and be at most max bytes. Throws
// Error(ExitCode::bad_input) naming what for anything else: frames may come from elsewhere.
std::string zstd_unpack(std::string_view frame, std::size_t max, std::string_view what);
// The frame's content into out, which it must fill exactly. Throws as zstd_unpack.
void zstd_unpack_into(std::string_view frame, std::span<std::uint8_t> out, std::string_view what);
// The size a frame declares, checked to be at most max. Throws as zstd_unpack.
std::size_t zstd_declared_size(std::string_view frame, std::size_t max, std::string_view what);

}  // namespace immortal
