// Files a campaign plan gives its guest (`files = [...]` of a [[faults]] table: a user's own
// module, the program that triggers it), copied in at every boot before the faults' setup. The
// copy goes through the agent's command channel, in chunks of shell commands (base64 text, a
// command line has a bounded length), so the guest needs no shared folder and nothing installed
// beyond sh and base64 (busybox has both).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace immortal::vmm {

// Where the files are in the guest: kGuestFilesDir/NAME, NAME the host file's own name.
inline constexpr char kGuestFilesDir[] = "/run/immortal-campaign";
// A file given to the guest is at most this large (a module is a few hundred KiB).
inline constexpr std::uint64_t kMaxGuestFileBytes = 64ull << 20;

// Is `name` usable as the file's name in the guest (letters, digits, '.', '-', '_'; not starting
// with '.'; at most 100 bytes)?
bool valid_guest_file_name(const std::string& name);

// The host file's size, checked: Error(bad_input) when it is not a readable regular file or is
// larger than kMaxGuestFileBytes.
std::uint64_t guest_file_size(const std::string& path);
// The host file's bytes. Throws Error(bad_input) when it is not a readable regular file or is
// larger than kMaxGuestFileBytes.
std::string read_guest_file(const std::string& path);

// A guest shell command: `sh -c script sh args…` (the data travels as positional parameters:
// the agent takes at most 4096 bytes per argument and 256 arguments).
struct GuestShellCommand {
  std::string script;
  std::vector<std::string> args;
};
inline constexpr std::size_t kGuestArgBytes = 4096;  // base64 text per argument (a multiple of 4)
inline constexpr std::size_t kGuestArgsPerCommand = 128;

// The shell commands that write `bytes` to DIR/NAME in the guest, one after another: each
// carries at most `chunk` bytes (a multiple of 3; by default what 128 arguments of base64 hold);
// the file appears under its name (mode 0644) only once whole, and the last command fails unless
// it has exactly bytes.size() bytes.
std::vector<GuestShellCommand> guest_file_commands(const std::string& dir, const std::string& name, const std::string& bytes,
                                                   std::size_t chunk = kGuestArgBytes / 4 * 3 * kGuestArgsPerCommand);

}  // namespace immortal::vmm
