// Loaded modules of the guest kernel (the `modules` list of struct module), with their text.
#pragma once

#include "kernel/kernel.h"
#include "kernel/list_walk.h"

#include <string>
#include <vector>

namespace immortal {

struct AddressRange {
  std::uint64_t begin = 0, end = 0;  // [begin, end)
  bool empty() const { return end <= begin; }
  std::uint64_t size() const { return empty() ? 0 : end - begin; }
  bool contains(std::uint64_t a, std::uint64_t n = 1) const { return a >= begin && n <= size() && a - begin <= size() - n; }
};

// Where a module lies. Linux 6.1 keeps its core in one block (core_layout: text, read-only data,
// ro_after_init data, data); 6.4 gives each part its own allocation (module.mem[]). Both read
// into this shape, from the kernel's own struct layouts (BTF).
struct ModuleInfo {
  std::uint64_t address = 0;  // struct module *
  std::string name;
  std::string state;          // live, coming, going, unformed
  std::uint64_t base = 0;     // the core text: [base, base + text_size)
  std::uint64_t text_size = 0;
  std::uint64_t size = 0;     // the whole core, text and data (as /proc/modules counts it)
  AddressRange rodata, ro_after_init, data;  // the core's other parts (each may be empty)
  bool layout_sane = true;    // the parts' bounds as read were in order (else clamped into the core)
  std::vector<AddressRange> non_text() const;
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
std::vector<FoundSymbol> read_module_symbols(const Kernel& kernel, const ModuleInfo& module);
inline constexpr std::size_t kMaxModuleSymbols = 1 << 16;

}  // namespace immortal
