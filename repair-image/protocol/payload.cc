#include "protocol/payload.h"

#include "base/error.h"

#include <fmt/format.h>

namespace immortal::repair {

namespace {

// newc: "070701", then 13 fields of 8 hex digits (ino, mode, uid, gid, nlink, mtime, filesize,
// devmajor, devminor, rdevmajor, rdevminor, namesize, check); the name (namesize bytes with its
// NUL) padded to 4 bytes from the header's start; the data padded to 4 bytes.
constexpr std::size_t kHeader = 110;
constexpr std::uint32_t kRegularFile = 0100000, kTypeMask = 0170000;

std::uint32_t hex_field(std::string_view header, int index) {
  std::uint32_t v = 0;
  for (char c : header.substr(6 + 8 * static_cast<std::size_t>(index), 8)) {
    int d = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
    if (d < 0) fail(ExitCode::bad_input, "repair payload: a header field is not hexadecimal");
    v = v << 4 | static_cast<std::uint32_t>(d);
  }
  return v;
}

std::size_t padded(std::size_t n) { return (n + 3) & ~std::size_t{3}; }

}  // namespace

std::map<std::string, std::string_view> read_payload(std::string_view archive) {
  std::map<std::string, std::string_view> files;
  std::size_t at = 0;
  for (std::size_t entries = 0;; ++entries) {
    if (entries > kPayloadMaxEntries) fail(ExitCode::bad_input, "repair payload: more than {} entries", kPayloadMaxEntries);
    if (archive.size() - at < kHeader) fail(ExitCode::bad_input, "repair payload: it ends without a trailer");
    std::string_view header = archive.substr(at, kHeader);
    if (header.substr(0, 6) != "070701") fail(ExitCode::bad_input, "repair payload: no newc header at offset {}", at);
    std::uint32_t mode = hex_field(header, 1), size = hex_field(header, 6), name_size = hex_field(header, 11);
    if (name_size == 0 || name_size > archive.size() - at - kHeader)
      fail(ExitCode::bad_input, "repair payload: a name runs past the end");
    std::string_view name = archive.substr(at + kHeader, name_size - 1);
    if (archive[at + kHeader + name_size - 1] != '\0') fail(ExitCode::bad_input, "repair payload: a name is not terminated");
    std::size_t data = padded(at + kHeader + name_size);
    if (name == "TRAILER!!!") return files;
    if (data > archive.size() || size > archive.size() - data) fail(ExitCode::bad_input, "repair payload: {} runs past the end", name);
    if ((mode & kTypeMask) == kRegularFile && !files.emplace(std::string(name), archive.substr(data, size)).second)
      fail(ExitCode::bad_input, "repair payload: {} appears twice", name);
    at = padded(data + size);
    if (at > archive.size()) fail(ExitCode::bad_input, "repair payload: it ends without a trailer");
  }
}

std::string write_payload(const std::map<std::string, std::string>& files) {
  std::string out;
  std::uint32_t inode = 0;
  auto entry = [&](std::string_view name, std::uint32_t mode, std::string_view data) {
    out += fmt::format("070701{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}", ++inode, mode, 0,
                       0, 1, 0, data.size(), 0, 0, 0, 0, name.size() + 1, 0);
    out += name;
    out += '\0';
    out.resize(padded(out.size()), '\0');
    out += data;
    out.resize(padded(out.size()), '\0');
  };
  std::size_t total = 0;
  for (const auto& [name, bytes] : files) total += kHeader + name.size() + bytes.size() + 8;
  out.reserve(total + kHeader + 16);
  for (const auto& [name, bytes] : files) entry(name, kRegularFile | 0444, bytes);
  entry("TRAILER!!!", 0, {});
  return out;
}

}  // namespace immortal::repair
