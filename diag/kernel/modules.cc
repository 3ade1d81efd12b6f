#include "kernel/modules.h"

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

}  // namespace immortal
