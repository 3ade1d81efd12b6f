// The repair payload: what a repair agent needs besides guest RAM — where guest RAM lies
// (repair.json), the healthy guest's profile (profile/…) and the healthy copy of its code
// (healthy/healthy.json, healthy/healthy.bin) — as one newc cpio archive in shared memory.
//
// The supervisor writes it into a sealed memfd at each profile; the repair VM sees that memfd as
// a read-only PCI window and the inline agent maps it from a descriptor. Neither copies it into
// files: the archive is read where it lies (docs/formats.md, "Repair payload"). newc because
// `cpio -t` lists it and the repair VM's initramfs is the same format.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <string_view>

namespace immortal::repair {

inline constexpr std::size_t kPayloadMaxEntries = 4096;

// Files of the archive: path → bytes (views into the archive). Directories and other entry
// types are skipped. Throws Error(ExitCode::bad_input) for a malformed archive: a bad magic or
// hex field, a name or a file that runs past the end, a duplicate path, more than
// kPayloadMaxEntries entries, no "TRAILER!!!". What follows the trailer (the window's unused
// rest) is ignored.
std::map<std::string, std::string_view> read_payload(std::string_view archive);

// Writes files (path → bytes) as a newc archive ending in "TRAILER!!!", every file 0444, owned by
// root. Paths are taken as they are (no leading '/').
std::string write_payload(const std::map<std::string, std::string>& files);

}  // namespace immortal::repair
