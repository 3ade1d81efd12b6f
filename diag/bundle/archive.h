// A bundle as one file: a tar archive compressed with zstd (libarchive), the way support
// engineers move bundles between machines. `tar --zstd -xf` unpacks it too.
#pragma once

#include <cstdint>
#include <functional>
#include <string>

namespace immortal::bundle {

// Packs directory dir as top-level folder `name` into path (written to path + ".partial" and
// renamed). Throws Error on failure.
void pack_directory(const std::string& dir, const std::string& name, const std::string& path);

// Unpacks archive into dest (which must exist and be empty). Only regular files and
// directories inside dest are accepted: absolute paths, "..", links and devices are refused.
// Limits total size to max_bytes. Returns the single top-level directory's path. Throws
// Error(ExitCode::bad_input) for anything wrong with the archive.
std::string unpack_archive(const std::string& archive, const std::string& dest, std::uint64_t max_bytes,
                           const std::function<void(std::uint64_t)>& progress = {});

}  // namespace immortal::bundle
