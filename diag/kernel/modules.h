// Loaded modules of the guest kernel (the `modules` list of struct module), with their text.
#pragma once

#include "kernel/kernel.h"
#include "kernel/list_walk.h"

#include <string>
#include <vector>

namespace immortal {

struct ModuleInfo {
  std::uint64_t address = 0;  // struct module *
  std::string name;
  std::string state;          // live, coming, going, unformed
  std::uint64_t base = 0;     // core_layout: text first, then read-only and writable data
  std::uint64_t size = 0;
  std::uint64_t text_size = 0;
  std::uint64_t ro_size = 0;  // text and read-only data: [base, base + ro_size)
  // init_layout: the __init code, freed once the module's init function returned (0 then).
  std::uint64_t init_base = 0;
  std::uint64_t init_text_size = 0;
  bool contains_text(std::uint64_t pc) const {
    return (pc >= base && pc - base < text_size) || (init_base && pc >= init_base && pc - init_base < init_text_size);
  }
};

struct ModuleList {
  std::vector<ModuleInfo> modules;
  WalkResult walk;
};

ModuleList read_modules(const Kernel& kernel, std::size_t max = 65536);

// A module's own symbol table in guest memory (struct module's kallsyms: what /proc/kallsyms
// lists for it, init symbols included while it is loading). Bounded: at most kMaxModuleSymbols
// symbols of printable names; throws MemoryFault for unreadable memory.
std::vector<Symbol> read_module_symbols(const Kernel& kernel, const ModuleInfo& module);
inline constexpr std::size_t kMaxModuleSymbols = 1 << 16;

}  // namespace immortal
