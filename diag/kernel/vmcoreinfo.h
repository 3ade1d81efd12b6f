// VMCOREINFO: the "KEY=VALUE" lines the kernel leaves for dump readers (kernel/crash_core.c and
// arch/x86/kernel/machine_kexec_64.c): OSRELEASE, PAGESIZE, SYMBOL(x), OFFSET(s.m), SIZE(x),
// NUMBER(x), KERNELOFFSET, ... Parsed leniently (unknown keys kept), values checked on use.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>

namespace immortal {

class Vmcoreinfo {
 public:
  static constexpr std::size_t kMaxSize = 1 << 20;
  // Throws Error(ExitCode::bad_input) for text that is not VMCOREINFO at all.
  static Vmcoreinfo parse(const std::string& text);

  std::optional<std::string> get(const std::string& key) const;
  std::optional<std::uint64_t> symbol(const std::string& name) const;   // SYMBOL(name), hex
  std::optional<std::uint64_t> number(const std::string& name) const;   // NUMBER(name), decimal
  std::optional<std::uint64_t> offset(const std::string& name) const;   // OFFSET(name), decimal
  std::optional<std::uint64_t> kernel_offset() const;                    // KERNELOFFSET, hex
  std::string release() const { return get("OSRELEASE").value_or(""); }
  const std::map<std::string, std::string>& entries() const { return entries_; }

 private:
  std::map<std::string, std::string> entries_;
};

}  // namespace immortal
