#include "kernel/modules.h"

#include "base/budgets.h"
#include "base/error.h"

#include <elf.h>

#include <algorithm>
#include <optional>

#include <vector>

namespace immortal {

std::vector<AddressRange> ModuleInfo::non_text() const {
  std::vector<AddressRange> out;
  for (const auto& r : {rodata, ro_after_init, data})
    if (!r.empty()) out.push_back(r);
  return out;
}

namespace {

// Linux 6.1–6.3: struct module_layout core_layout { base, size, text_size, ro_size,
// ro_after_init_size }: one block, text first.
class CoreLayoutReader {
 public:
  explicit CoreLayoutReader(const TypeInfo& t)
      : base_(t.offset_of("module", "core_layout.base")), size_(t.offset_of("module", "core_layout.size")),
        text_(t.offset_of("module", "core_layout.text_size")), ro_(t.field("module", "core_layout.ro_size")),
        ro_after_init_(t.field("module", "core_layout.ro_after_init_size")),
        init_base_(t.field("module", "init_layout.base")), init_text_(t.field("module", "init_layout.text_size")) {}
  void read(const KernelMemory& m, ModuleInfo& info) const {
    auto u32 = [&](std::uint64_t off) { return std::uint64_t{m.read_value<std::uint32_t>(info.address + off)}; };
    info.base = m.read_u64(info.address + base_);
    info.size = u32(size_);
    info.text_size = u32(text_);
    std::uint64_t ro = ro_ ? u32(ro_->byte_offset()) : info.text_size;
    std::uint64_t ro_after_init = ro_after_init_ ? u32(ro_after_init_->byte_offset()) : ro;
    // Each end no smaller than the one before and within the block (guest memory is untrusted).
    info.layout_sane = info.text_size <= ro && ro <= ro_after_init && ro_after_init <= info.size;
    std::uint64_t text_end = std::min(info.text_size, info.size), ro_end = std::clamp(ro, text_end, info.size),
                  rai_end = std::clamp(ro_after_init, ro_end, info.size);
    info.rodata = {info.base + text_end, info.base + ro_end};
    info.ro_after_init = {info.base + ro_end, info.base + rai_end};
    info.data = {info.base + rai_end, info.base + info.size};
    if (init_base_ && init_text_) {
      info.init_base = m.read_u64(info.address + init_base_->byte_offset());
      info.init_text_size = u32(init_text_->byte_offset());
    }
  }

 private:
  std::uint64_t base_, size_, text_;
  std::optional<FieldInfo> ro_, ro_after_init_, init_base_, init_text_;
};

// Linux 6.4 on: struct module_memory mem[MOD_MEM_NUM_TYPES] { base, size, … }, one allocation
// per kind, indexed by enum mod_mem_type (from BTF; these values where it has no enums).
class ModuleMemoryReader {
 public:
  explicit ModuleMemoryReader(const TypeInfo& t)
      : mem_(t.offset_of("module", "mem")), stride_(t.require_size("module_memory")),
        base_(t.offset_of("module_memory", "base")), size_(t.offset_of("module_memory", "size")),
        text_(index(t, "MOD_TEXT", 0)), data_(index(t, "MOD_DATA", 1)), rodata_(index(t, "MOD_RODATA", 2)),
        ro_after_init_(index(t, "MOD_RO_AFTER_INIT", 3)), init_text_(index(t, "MOD_INIT_TEXT", 4)),
        count_(t.require_field("module", "mem").size / stride_) {
    for (auto i : {text_, data_, rodata_, ro_after_init_, init_text_})
      if (i >= count_) fail(ExitCode::bad_input, "struct module's mem[] has {} entries, not enough for kind {}", count_, i);
  }
  void read(const KernelMemory& m, ModuleInfo& info) const {
    auto range = [&](std::uint64_t kind) {
      std::uint64_t at = info.address + mem_ + kind * stride_;
      std::uint64_t base = m.read_u64(at + base_), size = m.read_value<std::uint32_t>(at + size_);
      return base && base + size > base ? AddressRange{base, base + size} : AddressRange{};
    };
    AddressRange text = range(text_);
    info.base = text.begin;
    info.text_size = text.size();
    info.rodata = range(rodata_);
    info.ro_after_init = range(ro_after_init_);
    info.data = range(data_);
    info.size = text.size() + info.rodata.size() + info.ro_after_init.size() + info.data.size();
    AddressRange init = range(init_text_);
    info.init_base = init.begin;
    info.init_text_size = init.size();
  }

 private:
  static std::uint64_t index(const TypeInfo& t, const char* name, std::uint64_t otherwise) {
    auto v = t.enumerator(name);
    return v && *v >= 0 && *v < 64 ? static_cast<std::uint64_t>(*v) : otherwise;
  }
  std::uint64_t mem_, stride_, base_, size_, text_, data_, rodata_, ro_after_init_, init_text_, count_;
};

}  // namespace

ModuleList read_modules(const Kernel& kernel, std::size_t max) {
  const auto& m = kernel.memory();
  const auto& t = kernel.types();
  ModuleList list;
  std::uint64_t list_offset = t.offset_of("module", "list");
  std::uint64_t name_offset = t.offset_of("module", "name");
  // MODULE_NAME_LEN, whatever a forged BTF claims.
  std::uint64_t name_size = std::min<std::uint64_t>(t.require_field("module", "name").size, budget::kModuleName);
  std::uint64_t state_offset = t.offset_of("module", "state");
  std::optional<CoreLayoutReader> core;
  std::optional<ModuleMemoryReader> mem;
  if (t.field("module", "core_layout.base")) core.emplace(t);
  else if (t.field("module", "mem")) mem.emplace(t);
  else fail(ExitCode::bad_input, "struct module has neither core_layout (Linux 6.1) nor mem[] (6.4 on): "
            "this kernel's module layout is not understood");
  list.walk = walk_list(m, kernel.symbol("modules"), max, [&](std::uint64_t node) {
    ModuleInfo info;
    info.address = node - list_offset;
    info.name = m.read_cstring(info.address + name_offset, name_size);
    static const char* kStates[] = {"live", "coming", "going", "unformed"};
    auto state = m.read_value<std::uint32_t>(info.address + state_offset);
    info.state = state < 4 ? kStates[state] : "?";
    if (core) core->read(m, info);
    else mem->read(m, info);
    list.modules.push_back(info);
  });
  return list;
}

std::vector<FoundSymbol> read_module_symbols(const Kernel& kernel, const ModuleInfo& module) {
  const auto& m = kernel.memory();
  const auto& t = kernel.types();
  std::uint64_t kallsyms = m.read_u64(module.address + t.offset_of("module", "kallsyms"));
  std::uint64_t symtab = m.read_u64(kallsyms + t.offset_of("mod_kallsyms", "symtab"));
  auto count = m.read_value<std::uint32_t>(kallsyms + t.offset_of("mod_kallsyms", "num_symtab"));
  std::uint64_t strtab = m.read_u64(kallsyms + t.offset_of("mod_kallsyms", "strtab"));
  std::uint64_t typetab = m.read_u64(kallsyms + t.offset_of("mod_kallsyms", "typetab"));
  std::vector<FoundSymbol> out;
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
    out.push_back(FoundSymbol{e.st_value, type, std::move(name), module.name});
  }
  return out;
}

}  // namespace immortal
