#include "kernel/vmcoreinfo.h"

#include "base/error.h"

#include <sstream>

namespace immortal {

namespace {
std::optional<std::uint64_t> to_number(const std::optional<std::string>& text, int base) {
  if (!text || text->empty() || text->size() > 20) return std::nullopt;
  try {
    std::size_t used = 0;
    // NUMBER() values may be negative (e.g. NUMBER(PG_hugetlb)); keep the two's complement.
    std::uint64_t v = (*text)[0] == '-' ? static_cast<std::uint64_t>(std::stoll(*text, &used, base))
                                        : std::stoull(*text, &used, base);
    if (used != text->size()) return std::nullopt;
    return v;
  } catch (const std::exception&) {
    return std::nullopt;
  }
}
}  // namespace

Vmcoreinfo Vmcoreinfo::parse(const std::string& text) {
  if (text.size() > kMaxSize) fail(ExitCode::bad_input, "VMCOREINFO is too large ({} bytes)", text.size());
  Vmcoreinfo info;
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);) {
    while (!line.empty() && (line.back() == '\0' || line.back() == '\r')) line.pop_back();
    auto eq = line.find('=');
    if (eq == std::string::npos || eq == 0) continue;
    info.entries_[line.substr(0, eq)] = line.substr(eq + 1);
  }
  if (!info.get("OSRELEASE") && !info.get("PAGESIZE"))
    fail(ExitCode::bad_input, "this is not VMCOREINFO (no OSRELEASE or PAGESIZE)");
  return info;
}

std::optional<std::string> Vmcoreinfo::get(const std::string& key) const {
  auto it = entries_.find(key);
  if (it == entries_.end()) return std::nullopt;
  return it->second;
}

std::optional<std::uint64_t> Vmcoreinfo::symbol(const std::string& name) const {
  return to_number(get("SYMBOL(" + name + ")"), 16);
}
std::optional<std::uint64_t> Vmcoreinfo::number(const std::string& name) const {
  return to_number(get("NUMBER(" + name + ")"), 10);
}
std::optional<std::uint64_t> Vmcoreinfo::offset(const std::string& name) const {
  return to_number(get("OFFSET(" + name + ")"), 10);
}
std::optional<std::uint64_t> Vmcoreinfo::kernel_offset() const { return to_number(get("KERNELOFFSET"), 16); }

}  // namespace immortal
