#include "kernel/modules.h"

#include <elf.h>

#include <algorithm>

#include <vector>

namespace immortal {

ModuleList read_modules(const Kernel& kernel, std::size_t max) {
  const auto& m = kernel.memory();
  const auto& t = kernel.types();
  ModuleList list;
  std::uint64_t list_offset = t.offset_of("module", "list");
  std::uint64_t name_offset = t.offset_of("module", "name");
  std::uint64_t name_size = t.require_field("module", "name").size;
  std::uint64_t state_offset = t.offset_of("module", "state");
  // Linux 6.1: struct module_layout core_layout { base, size, text_size, ... }.
  std::uint64_t base_offset = t.offset_of("module", "core_layout.base");
  std::uint64_t size_offset = t.offset_of("module", "core_layout.size");
  std::uint64_t text_offset = t.offset_of("module", "core_layout.text_size");
  auto ro_size = t.field("module", "core_layout.ro_size");
  auto init_base = t.field("module", "init_layout.base"), init_text = t.field("module", "init_layout.text_size");
  list.walk = walk_list(m, kernel.symbol("modules"), max, [&](std::uint64_t node) {
    ModuleInfo info;
    info.address = node - list_offset;
    info.name = m.read_cstring(info.address + name_offset, name_size);
    static const char* kStates[] = {"live", "coming", "going", "unformed"};
    auto state = m.read_value<std::uint32_t>(info.address + state_offset);
    info.state = state < 4 ? kStates[state] : "?";
    info.base = m.read_u64(info.address + base_offset);
    info.size = m.read_value<std::uint32_t>(info.address + size_offset);
    info.text_size = m.read_value<std::uint32_t>(info.address + text_offset);
    if (ro_size) info.ro_size = m.read_value<std::uint32_t>(info.address + ro_size->byte_offset());
    if (init_base && init_text) {
      info.init_base = m.read_u64(info.address + init_base->byte_offset());
      info.init_text_size = m.read_value<std::uint32_t>(info.address + init_text->byte_offset());
    }
    list.modules.push_back(info);
  });
  return list;
}

std::vector<Symbol> read_module_symbols(const Kernel& kernel, const ModuleInfo& module) {
  const auto& m = kernel.memory();
  const auto& t = kernel.types();
  std::uint64_t kallsyms = m.read_u64(module.address + t.offset_of("module", "kallsyms"));
  std::uint64_t symtab = m.read_u64(kallsyms + t.offset_of("mod_kallsyms", "symtab"));
  auto count = m.read_value<std::uint32_t>(kallsyms + t.offset_of("mod_kallsyms", "num_symtab"));
  std::uint64_t strtab = m.read_u64(kallsyms + t.offset_of("mod_kallsyms", "strtab"));
  std::uint64_t typetab = m.read_u64(kallsyms + t.offset_of("mod_kallsyms", "typetab"));
  std::vector<Symbol> out;
  if (count == 0 || count > kMaxModuleSymbols) return out;
  std::vector<Elf64_Sym> syms(count);
  m.read(symtab, std::as_writable_bytes(std::span(syms)));
  std::vector<char> types(count);
  m.read(typetab, std::as_writable_bytes(std::span(types)));
  for (std::uint32_t i = 0; i < count; ++i) {
    const Elf64_Sym& e = syms[i];
    if (e.st_value == 0 || e.st_name == 0) continue;
    char type = types[i];
    // As /proc/kallsyms shows a module: its functions and data, no section or file symbols.
    if (type != 't' && type != 'T' && type != 'd' && type != 'D' && type != 'b' && type != 'B' && type != 'r' &&
        type != 'R')
      continue;
    std::string name;
    try {
      name = m.read_cstring(strtab + e.st_name, 128);
    } catch (const MemoryFault&) {
      continue;
    }
    if (name.empty() || !std::all_of(name.begin(), name.end(), [](char c) { return c > 0x20 && c < 0x7f; })) continue;
    out.push_back(Symbol{e.st_value, type, std::move(name), module.name});
  }
  return out;
}

}  // namespace immortal
