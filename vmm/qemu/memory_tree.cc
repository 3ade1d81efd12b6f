#include "qemu/memory_tree.h"

#include "base/error.h"

#include <algorithm>
#include <charconv>
#include <regex>

namespace immortal::qemu {

namespace {

std::uint64_t hex(std::string_view text) {
  std::uint64_t value = 0;
  auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), value, 16);
  if (ec != std::errc() || end != text.data() + text.size()) fail(ExitCode::qemu, "bad address \"{}\" in QEMU's memory tree", text);
  return value;
}

}  // namespace

std::vector<RamSegment> ram_layout_from_memory_tree(std::string_view info_mtree, const std::string& region) {
  // "  0000000000100000-0000000017ffffff (prio 0, ram): pc.ram @0000000000100000 KVM"
  static const std::regex line_re(R"(^\s*([0-9a-fA-F]{1,16})-([0-9a-fA-F]{1,16}) \(prio -?\d+, (ram|rom|romd)\): (\S+)(?: @([0-9a-fA-F]{1,16}))?)");
  std::vector<RamSegment> segments;
  bool in_system = false, seen_system = false;
  std::size_t start = 0;
  while (start < info_mtree.size()) {
    std::size_t end = info_mtree.find('\n', start);
    if (end == std::string_view::npos) end = info_mtree.size();
    std::string line(info_mtree.substr(start, end - start));
    start = end + 1;
    if (line.starts_with("FlatView")) {
      if (seen_system) break;  // only the first view of the system address space
      in_system = false;
      continue;
    }
    if (line.find("Root memory region: system") != std::string::npos) {
      in_system = seen_system = true;
      continue;
    }
    std::smatch m;
    if (!in_system || !std::regex_search(line, m, line_re) || m[4] != region) continue;
    std::uint64_t first = hex(m[1].str()), last = hex(m[2].str());
    std::uint64_t offset = m[5].matched ? hex(m[5].str()) : 0;
    if (last < first || offset + (last - first) < offset)
      fail(ExitCode::qemu, "QEMU's memory tree has a malformed range of {}: {}", region, line);
    segments.push_back({first, offset, last - first + 1});
  }
  if (!seen_system) fail(ExitCode::qemu, "QEMU's memory tree has no flat view of the system address space");
  if (segments.empty()) fail(ExitCode::qemu, "QEMU's memory tree does not map the RAM backend \"{}\"", region);
  std::sort(segments.begin(), segments.end(), [](auto& a, auto& b) { return a.guest_physical < b.guest_physical; });
  std::vector<RamSegment> merged{segments.front()};
  for (std::size_t i = 1; i < segments.size(); ++i) {
    RamSegment& last = merged.back();
    const RamSegment& next = segments[i];
    if (next.guest_physical < last.guest_physical + last.size)
      fail(ExitCode::qemu, "QEMU's memory tree maps two ranges of {} over each other at {:#x}", region, next.guest_physical);
    if (next.guest_physical == last.guest_physical + last.size && next.file_offset == last.file_offset + last.size)
      last.size += next.size;
    else
      merged.push_back(next);
  }
  return merged;
}

}  // namespace immortal::qemu
