// Source lines for code in loaded kernel modules, from the modules' .ko files with DWARF (a
// kernel build tree, or Debian's /usr/lib/debug/lib/modules/<release>). A .ko is relocatable
// (ET_REL): its DWARF addresses are relative to its sections, and the kernel placed each
// section somewhere of its own when it loaded the module. libdwfl applies the .ko's relocations
// and lays its sections out at addresses of its choosing; the guest's own record of where each
// section went (struct module's sect_attrs) maps a guest pc to the same place in that layout.
//
// Both inputs are untrusted: guest memory (bounded counts, printable names) and the .ko files
// (a malformed or mismatched file gives no line, never a crash).
#pragma once

#include "kernel/kernel.h"
#include "kernel/modules.h"

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace immortal {

// Where each allocated section of a loaded module sits in the guest, by section name: read
// from the module's struct module (sect_attrs: the same data as /sys/module/NAME/sections/*),
// via the kernel's types. Empty when the module has none (it is still being loaded). Throws
// Error(ExitCode::bad_input) when the types lack the structs (another layout than 6.1's, or a
// kernel without CONFIG_KALLSYMS/CONFIG_SYSFS), MemoryFault when struct module or the head of
// sect_attrs cannot be read; entries with unreadable or implausible names are left out.
std::map<std::string, std::uint64_t> module_section_addresses(const Kernel& kernel, std::uint64_t module_address);

// One per modules directory; indexes it on first use and opens each .ko once, lazily.
class ModuleDebugInfo {
 public:
  explicit ModuleDebugInfo(std::string modules_dir);
  ~ModuleDebugInfo();
  ModuleDebugInfo(const ModuleDebugInfo&) = delete;
  ModuleDebugInfo& operator=(const ModuleDebugInfo&) = delete;

  // "drivers/foo/bar.c:123" for a code address inside module `module` (struct module at
  // module.address) of the given kernel, if a .ko for it is found, is the build the guest
  // loaded (GNU build ids compared when both have one) and its line tables cover the address.
  // File names are made relative to the compilation directory when they lie inside it (in-tree
  // modules); out-of-tree modules keep their absolute source paths.
  std::optional<std::string> source_line(const Kernel& kernel, const ModuleInfo& module, std::uint64_t pc);

  // The files that may hold `module_name`'s debug information, in the order they are tried:
  // NAME.ko.debug before NAME.ko ('-' and '_' alike), anywhere under the directory.
  std::vector<std::string> candidates(const std::string& module_name);

  struct LoadedKo;  // one opened .ko: libdwfl session, section table, build id

 private:
  void index();
  const std::vector<std::unique_ptr<LoadedKo>>& load(const std::string& module_name);

  std::string dir_;
  bool indexed_ = false;
  std::map<std::string, std::vector<std::string>> files_;  // normalised module name → paths
  std::map<std::string, std::vector<std::unique_ptr<LoadedKo>>> loaded_;  // normalised name → usable .ko files
};

}  // namespace immortal
