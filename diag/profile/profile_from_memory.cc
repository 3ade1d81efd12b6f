#include "profile/profile_from_memory.h"

#include "base/budgets.h"
#include "base/error.h"
#include "kernel/kernel.h"
#include "kernel/kernel_memory.h"
#include "kernel/list_walk.h"
#include "kernel/modules.h"
#include "kernel/symbols.h"
#include "types/btf_types.h"
#include "x86_64/page_tables.h"

#include <fmt/format.h>

#include <algorithm>
#include <array>
#include <cctype>
#include <cstring>
#include <iterator>
#include <set>
#include <sstream>
#include <utility>
#include <vector>

namespace immortal {

namespace {

// KSYM_NAME_LEN is 512 in Linux 6.1 (include/linux/kallsyms.h, raised for Rust): a longer name,
// type letter included, means the tables are not what we think they are.
constexpr std::size_t kMaxNameLength = 512;
// A token is a piece of some symbol's text, so it is never longer than a name.
constexpr std::size_t kMaxTokenLength = kMaxNameLength + 1;
// scripts/kallsyms.c writes each compressed length as ULEB128 of at most two bytes (0x3fff).
constexpr std::size_t kMaxCompressedLength = 0x3fff;
// Debian's 6.1 kallsyms_names holds ~95,000 symbols in ~1.3 MiB; allow far more, not unbounded.
constexpr std::uint64_t kMaxNamesSize = 64ull << 20;

// A guest table read by kernel virtual address front to back, in chunks: kallsyms_names has no
// stored size (it ends where kallsyms_markers begins), so it is read as far as decoding goes.
class SequentialBytes {
  // Addresses from VMCOREINFO are untrusted: keep base + limit, and each page end below, from
  // wrapping around (the top page never holds kernel data).
  static constexpr std::uint64_t kTopPage = 0xfffffffffffff000ull;

 public:
  SequentialBytes(const KernelMemory& memory, std::uint64_t base, std::uint64_t limit, const char* what)
      : memory_(memory), base_(base), limit_(std::min(limit, kTopPage - std::min(base, kTopPage))), what_(what) {}

  std::uint8_t at(std::uint64_t index) {
    if (index >= limit_) fail(ExitCode::bad_input, "{} runs past {} bytes: the kallsyms tables are corrupt", what_, limit_);
    while (index >= bytes_.size()) grow(index);
    return bytes_[index];
  }

 private:
  void grow(std::uint64_t index) {
    // Up to 64 KiB at a time, ending on a page boundary so a failed chunk can be retried page
    // by page: the table may end just before an unmapped page.
    std::uint64_t from = base_ + bytes_.size();
    std::uint64_t to = std::min<std::uint64_t>(((from + 0x10000) & ~0xfffull), base_ + limit_);
    std::uint64_t page_end = std::min<std::uint64_t>((from | 0xfff) + 1, base_ + limit_);
    for (std::uint64_t end : {to, page_end}) {
      std::size_t old = bytes_.size();
      bytes_.resize(old + (end - from));
      try {
        memory_.read(from, std::as_writable_bytes(std::span(bytes_.data() + old, end - from)));
        return;
      } catch (const MemoryFault& e) {
        bytes_.resize(old);
        if (end == page_end)
          fail(ExitCode::bad_input, "{} at {:#x} is not readable at byte {}: {}", what_, base_, index, e.what());
      }
    }
  }

  const KernelMemory& memory_;
  std::uint64_t base_, limit_;
  const char* what_;
  std::vector<std::uint8_t> bytes_;
};

std::uint64_t require_symbol(const Vmcoreinfo& vi, const char* name) {
  auto v = vi.symbol(name);
  if (!v || *v < kKernelSpaceStart)
    fail(ExitCode::bad_input,
         "VMCOREINFO has no usable SYMBOL({}): this kernel does not describe its own symbols, "
         "so a healthy-guest profile is needed",
         name);
  return *v;
}

template <typename T>
T read_or_fail(const KernelMemory& m, std::uint64_t vaddr, const char* what) {
  try {
    return m.read_value<T>(vaddr);
  } catch (const MemoryFault& e) {
    fail(ExitCode::bad_input, "cannot read {} at {:#x}: {}", what, vaddr, e.what());
  }
}

// The page tables to read the kernel through, as Kernel::open finds them.
KernelLayout layout_from(const Vmcoreinfo& vi) {
  KernelLayout layout;
  std::uint64_t top = require_symbol(vi, "init_top_pgt");
  layout.phys_base = vi.number("phys_base").value_or(0);  // may be negative (two's complement)
  layout.five_level = vi.number("pgtable_l5_enabled").value_or(0) != 0;
  layout.kaslr_offset = vi.kernel_offset().value_or(0);
  layout.page_table = top - x86_64::kStartKernelMap + layout.phys_base;
  return layout;
}

bool printable(std::string_view s) {
  return std::all_of(s.begin(), s.end(), [](char c) { return c > 0x20 && c < 0x7f; });
}

// The 256 tokens of kallsyms_token_table, each a NUL-terminated string at the offset
// kallsyms_token_index gives (scripts/kallsyms.c write_src).
std::array<std::string, 256> read_tokens(const KernelMemory& m, std::uint64_t table, std::uint64_t index) {
  std::array<std::uint16_t, 256> offsets;
  try {
    m.read(index, std::as_writable_bytes(std::span(offsets)));
  } catch (const MemoryFault& e) {
    fail(ExitCode::bad_input, "cannot read kallsyms_token_index at {:#x}: {}", index, e.what());
  }
  std::array<std::string, 256> tokens;
  for (std::size_t i = 0; i < 256; ++i) {
    try {
      tokens[i] = m.read_cstring(table + offsets[i], kMaxTokenLength + 1);
    } catch (const MemoryFault& e) {
      fail(ExitCode::bad_input, "kallsyms token {} (offset {} in kallsyms_token_table) is not readable: {}", i,
           offsets[i], e.what());
    }
    if (tokens[i].size() > kMaxTokenLength)
      fail(ExitCode::bad_input, "kallsyms token {} is longer than {} bytes: the token table is corrupt", i,
           kMaxTokenLength);
  }
  return tokens;
}

struct KernelSymbols {
  std::string kallsyms;  // /proc/kallsyms lines of the kernel image
  std::optional<std::uint64_t> start_btf, stop_btf, linux_banner;
};

// Linux 6.1 kernel/kallsyms.c: kallsyms_expand_symbol() and kallsyms_sym_address().
KernelSymbols decode_kallsyms(const KernelMemory& m, const Vmcoreinfo& vi) {
  std::uint64_t names_at = require_symbol(vi, "kallsyms_names");
  std::uint64_t num_at = require_symbol(vi, "kallsyms_num_syms");
  std::uint64_t token_table_at = require_symbol(vi, "kallsyms_token_table");
  std::uint64_t token_index_at = require_symbol(vi, "kallsyms_token_index");
  std::uint64_t offsets_at = require_symbol(vi, "kallsyms_offsets");
  std::uint64_t base_at = require_symbol(vi, "kallsyms_relative_base");

  // kallsyms_num_syms is an `unsigned int` in 6.1 (`unsigned long` before 4.x): the low four
  // bytes are the count either way on little-endian x86-64.
  std::uint32_t count = read_or_fail<std::uint32_t>(m, num_at, "kallsyms_num_syms");
  if (count == 0 || count > SymbolTable::kMaxSymbols)
    fail(ExitCode::bad_input, "kallsyms_num_syms is {} (expected 1 to {}): the kallsyms tables are corrupt", count,
         SymbolTable::kMaxSymbols);
  std::uint64_t relative_base = read_or_fail<std::uint64_t>(m, base_at, "kallsyms_relative_base");
  if (relative_base < kKernelSpaceStart)
    fail(ExitCode::bad_input, "kallsyms_relative_base is {:#x}, not a kernel address", relative_base);

  std::vector<std::int32_t> offsets(count);
  try {
    m.read(offsets_at, std::as_writable_bytes(std::span(offsets)));
  } catch (const MemoryFault& e) {
    fail(ExitCode::bad_input, "cannot read kallsyms_offsets ({} entries at {:#x}): {}", count, offsets_at, e.what());
  }
  // With CONFIG_KALLSYMS_ABSOLUTE_PERCPU (x86-64 SMP), scripts/kallsyms.c stores absolute
  // symbols (per-CPU variables, linked at 0) as non-negative values and every other symbol as
  // relative_base - 1 - address, a negative number; without it all are u32 offsets from
  // relative_base. A kernel image spans far less than 2 GiB, so a negative entry can only come
  // from the first scheme.
  bool absolute_percpu = std::any_of(offsets.begin(), offsets.end(), [](std::int32_t o) { return o < 0; });
  auto address = [&](std::int32_t o) -> std::uint64_t {
    if (!absolute_percpu) return relative_base + static_cast<std::uint32_t>(o);
    if (o >= 0) return static_cast<std::uint64_t>(o);
    return relative_base - 1 - static_cast<std::uint64_t>(static_cast<std::int64_t>(o));
  };

  auto tokens = read_tokens(m, token_table_at, token_index_at);
  SequentialBytes names(m, names_at, kMaxNamesSize, "kallsyms_names");

  KernelSymbols out;
  out.kallsyms.reserve(static_cast<std::size_t>(count) * 40);
  std::string text;
  std::uint64_t off = 0;
  for (std::uint32_t i = 0; i < count; ++i) {
    // The compressed length: one byte, or two when the high bit is set ("big" symbols,
    // 6.1's 73bbb94466fd: ULEB128 of at most 14 bits).
    std::size_t len = names.at(off++);
    if (len & 0x80) len = (len & 0x7f) | static_cast<std::size_t>(names.at(off++)) << 7;
    if (len == 0 || len > kMaxCompressedLength)
      fail(ExitCode::bad_input, "kallsyms symbol {} of {} has compressed length {}: the kallsyms tables are corrupt", i,
           count, len);
    text.clear();
    for (std::size_t k = 0; k < len; ++k) {
      text += tokens[names.at(off++)];
      if (text.size() > kMaxNameLength + 1)
        fail(ExitCode::bad_input, "kallsyms symbol {} of {} expands past {} characters: the kallsyms tables are corrupt",
             i, count, kMaxNameLength);
    }
    // The first expanded character is the type letter (kallsyms_get_symbol_type), the rest the name.
    if (text.size() < 2 || !printable(text))
      fail(ExitCode::bad_input, "kallsyms symbol {} of {} decodes to an empty or unprintable name: the kallsyms tables are "
           "corrupt", i, count);
    std::uint64_t a = address(offsets[i]);
    std::string_view name = std::string_view(text).substr(1);
    fmt::format_to(std::back_inserter(out.kallsyms), "{:016x} {} {}\n", a, text[0], name);
    if (out.kallsyms.size() > GuestProfile::kMaxFileSize)
      fail(ExitCode::bad_input, "the decoded kallsyms exceed {} bytes", GuestProfile::kMaxFileSize);
    if (name == "__start_BTF") out.start_btf = a;
    else if (name == "__stop_BTF") out.stop_btf = a;
    else if (name == "linux_banner") out.linux_banner = a;
  }
  return out;
}

std::string read_btf(const KernelMemory& m, const KernelSymbols& symbols) {
  if (!symbols.start_btf || !symbols.stop_btf)
    fail(ExitCode::bad_input, "the kernel's symbols have no __start_BTF/__stop_BTF: it was built without BTF "
         "(CONFIG_DEBUG_INFO_BTF), so a healthy-guest profile or a debug vmlinux is needed for its types");
  std::uint64_t start = *symbols.start_btf, stop = *symbols.stop_btf;
  if (stop <= start || stop - start > GuestProfile::kMaxFileSize)
    fail(ExitCode::bad_input, "the kernel's BTF bounds are implausible (__start_BTF {:#x}, __stop_BTF {:#x})", start, stop);
  std::string btf(stop - start, '\0');
  try {
    m.read(start, std::as_writable_bytes(std::span(btf.data(), btf.size())));
  } catch (const MemoryFault& e) {
    fail(ExitCode::bad_input, "the kernel's BTF ({} bytes at {:#x}) is not readable: {}", btf.size(), start, e.what());
  }
  // struct btf_header starts with magic 0xeb9f (include/uapi/linux/btf.h).
  if (btf.size() < 24 || static_cast<std::uint8_t>(btf[0]) != 0x9f || static_cast<std::uint8_t>(btf[1]) != 0xeb)
    fail(ExitCode::bad_input, "the bytes at __start_BTF ({:#x}) are not BTF (no 0xeb9f magic)", start);
  return btf;
}

// OSRELEASE from VMCOREINFO, else the third word of linux_banner ("Linux version 6.1.0-56-amd64 ...").
std::string release_of(const KernelMemory& m, const Vmcoreinfo& vi, const KernelSymbols& symbols) {
  if (!vi.release().empty()) return vi.release();
  if (!symbols.linux_banner) return "";
  try {
    std::istringstream words(m.read_cstring(*symbols.linux_banner, 256));
    std::string word0, word1, release;
    if (words >> word0 >> word1 >> release && word0 == "Linux" && word1 == "version" && printable(release))
      return release;
  } catch (const MemoryFault&) {
  }
  return "";
}

// Loaded modules, as /proc/kallsyms and /proc/modules show them (Linux 6.1
// kernel/module/kallsyms.c module_get_kallsym, kernel/kallsyms.c s_show, kernel/module/procfs.c
// m_show). Struct layouts come from the kernel's BTF.
constexpr std::uint32_t kMaxModuleSymbols = 1 << 20;
constexpr std::uint32_t kMaxModuleExports = 1 << 16;

struct ModuleText {
  std::string kallsyms, modules;
};

// The module's exported symbols (mod->syms), as (name, address): s_show prints a module symbol's
// type in upper case when it is exported with that value (is_exported), in lower case otherwise.
std::set<std::pair<std::string, std::uint64_t>> exported_symbols(const Kernel& kernel, std::uint64_t mod) {
  const auto& m = kernel.memory();
  const auto& t = kernel.types();
  std::set<std::pair<std::string, std::uint64_t>> out;
  auto syms = t.field("module", "syms"), num = t.field("module", "num_syms");
  auto entry = t.struct_size("kernel_symbol");
  if (!syms || !num || !entry || *entry == 0 || *entry > 64) return out;
  std::uint64_t at = m.read_u64(mod + syms->byte_offset());
  std::uint32_t count = m.read_value<std::uint32_t>(mod + num->byte_offset());
  if (count > kMaxModuleExports) return out;
  // x86-64 has CONFIG_HAVE_ARCH_PREL32_RELOCATIONS: value and name are 32-bit offsets from the
  // fields themselves (include/linux/export.h); otherwise plain pointers.
  auto value_offset = t.field("kernel_symbol", "value_offset"), name_offset = t.field("kernel_symbol", "name_offset");
  auto value = t.field("kernel_symbol", "value"), name = t.field("kernel_symbol", "name");
  for (std::uint32_t i = 0; i < count; ++i) {
    std::uint64_t ks = at + i * *entry;
    std::uint64_t v, n;
    if (value_offset && name_offset) {
      std::uint64_t vf = ks + value_offset->byte_offset(), nf = ks + name_offset->byte_offset();
      v = vf + static_cast<std::uint64_t>(static_cast<std::int64_t>(m.read_value<std::int32_t>(vf)));
      n = nf + static_cast<std::uint64_t>(static_cast<std::int64_t>(m.read_value<std::int32_t>(nf)));
    } else if (value && name) {
      v = m.read_u64(ks + value->byte_offset());
      n = m.read_u64(ks + name->byte_offset());
    } else {
      return out;
    }
    out.emplace(m.read_cstring(n, kMaxNameLength), v);
  }
  return out;
}

// "addr t name\t[module]" lines of one module (mod->kallsyms: all symbols while it loads, the
// core ones once its init ran).
std::string module_kallsyms(const Kernel& kernel, const ModuleInfo& module, std::size_t* total) {
  const auto& m = kernel.memory();
  const auto& t = kernel.types();
  std::uint64_t kallsyms = m.read_u64(module.address + t.offset_of("module", "kallsyms"));
  std::uint64_t symtab = m.read_u64(kallsyms + t.offset_of("mod_kallsyms", "symtab"));
  std::uint32_t count = m.read_value<std::uint32_t>(kallsyms + t.offset_of("mod_kallsyms", "num_symtab"));
  std::uint64_t strtab = m.read_u64(kallsyms + t.offset_of("mod_kallsyms", "strtab"));
  std::uint64_t typetab = m.read_u64(kallsyms + t.offset_of("mod_kallsyms", "typetab"));
  if (count > kMaxModuleSymbols || *total + count > SymbolTable::kMaxSymbols)
    fail(ExitCode::bad_input, "module {} claims {} symbols", module.name, count);
  // Elf64_Sym: st_name u32, st_info u8, st_other u8, st_shndx u16, st_value u64, st_size u64.
  struct ElfSym {
    std::uint32_t name;
    std::uint8_t info, other;
    std::uint16_t shndx;
    std::uint64_t value, size;
  };
  static_assert(sizeof(ElfSym) == 24);
  std::vector<ElfSym> symbols(count);
  std::string types(count, '\0');
  m.read(symtab, std::as_writable_bytes(std::span(symbols)));
  m.read(typetab, std::as_writable_bytes(std::span(types.data(), types.size())));
  auto exported = exported_symbols(kernel, module.address);
  std::string out;
  for (std::uint32_t i = 0; i < count; ++i) {
    std::string name = m.read_cstring(strtab + symbols[i].name, kMaxNameLength + 1);
    if (name.empty()) continue;  // s_show skips nameless entries (symbol 0)
    char type = types[i];
    if (!printable(name) || name.size() > kMaxNameLength || !printable(std::string_view(&type, 1)))
      fail(ExitCode::bad_input, "module {} has a malformed symbol {}", module.name, i);
    bool is_exported = exported.count({name, symbols[i].value}) != 0;
    type = static_cast<char>(is_exported ? std::toupper(static_cast<unsigned char>(type))
                                         : std::tolower(static_cast<unsigned char>(type)));
    fmt::format_to(std::back_inserter(out), "{:016x} {} {}\t[{}]\n", symbols[i].value, type, name, module.name);
    ++*total;
  }
  return out;
}

// One /proc/modules line: "name size refcount deps state 0xaddress [(taints)]".
std::string module_line(const Kernel& kernel, const ModuleInfo& module) {
  const auto& m = kernel.memory();
  const auto& t = kernel.types();
  std::uint64_t size = module.size;
  if (auto init_size = t.field("module", "init_layout.size"))
    size += m.read_value<std::uint32_t>(module.address + init_size->byte_offset());
  std::string line = fmt::format("{} {}", module.name, size);
  // print_unload_info: refcount (refcnt - MODULE_REF_BASE), then "user," for each module using
  // this one (source_list), "[permanent]," for a module that cannot be unloaded, or "-".
  if (auto refcnt = t.field("module", "refcnt")) {
    line += fmt::format(" {} ", m.read_value<std::int32_t>(module.address + refcnt->byte_offset()) - 1);
    std::string users;
    auto source_list = t.field("module", "source_list");
    auto use_list = t.field("module_use", "source_list"), use_source = t.field("module_use", "source");
    auto name = t.require_field("module", "name");
    if (source_list && use_list && use_source) {
      walk_list(m, module.address + source_list->byte_offset(), 1024, [&](std::uint64_t node) {
        std::uint64_t source = m.read_u64(node - use_list->byte_offset() + use_source->byte_offset());
        std::string user = m.read_cstring(source + name.byte_offset(), std::min<std::uint64_t>(name.size, budget::kModuleName));
        if (!printable(user)) user.assign(1, '?');
        users.append(user);
        users.push_back(',');
      });
    }
    auto init = t.field("module", "init"), exit = t.field("module", "exit");
    if (init && exit && m.read_u64(module.address + init->byte_offset()) != 0 &&
        m.read_u64(module.address + exit->byte_offset()) == 0)
      users += "[permanent],";
    line += users.empty() ? "-" : users;
  } else {
    line += " - -";
  }
  line += module.state == "going" ? " Unloading" : module.state == "coming" ? " Loading" : " Live";
  line += fmt::format(" 0x{:016x}", module.base);
  // module_flags(): the module's taint letters (kernel/panic.c taint_flags[] with .module set),
  // then '-' while unloading or '+' while loading.
  if (auto taints_field = t.field("module", "taints")) {
    std::uint64_t taints = m.read_u64(module.address + taints_field->byte_offset());
    if (taints) {
      static const std::pair<int, char> kModuleTaints[] = {{0, 'P'},  {1, 'F'},  {10, 'C'}, {12, 'O'}, {13, 'E'},
                                                           {15, 'K'}, {16, 'X'}, {17, 'T'}, {18, 'N'}};
      line += " (";
      for (auto [bit, letter] : kModuleTaints)
        if (taints & (1ull << bit)) line += letter;
      if (module.state == "going") line += '-';
      if (module.state == "coming") line += '+';
      line += ')';
    }
  }
  return line + "\n";
}

ModuleText read_module_text(const PhysicalMemory& memory, const Vmcoreinfo& vi, const GuestProfile& profile) {
  ModuleText out;
  auto kernel = Kernel::assemble(memory, layout_from(vi), SymbolTable::from_kallsyms(profile.kallsyms),
                                 BtfTypes::parse(profile.btf_vmlinux), profile.kernel_release);
  ModuleList list = read_modules(*kernel);
  std::size_t total = kernel->symbols().size();
  for (const auto& module : list.modules) {
    if (module.state == "unformed" || !printable(module.name)) continue;
    // One damaged module leaves out its own lines, not the others'.
    try {
      std::string symbols = module_kallsyms(*kernel, module, &total);
      std::string line = module_line(*kernel, module);
      out.kallsyms += symbols;
      out.modules += line;
    } catch (const Error&) {
    } catch (const MemoryFault&) {
    }
    if (out.kallsyms.size() + profile.kallsyms.size() > GuestProfile::kMaxFileSize)
      fail(ExitCode::bad_input, "the modules' kallsyms exceed {} bytes", GuestProfile::kMaxFileSize);
  }
  return out;
}

}  // namespace

GuestProfile profile_from_memory(const PhysicalMemory& memory, const Vmcoreinfo& vmcoreinfo) {
  KernelMemory m(memory, layout_from(vmcoreinfo));
  KernelSymbols symbols = decode_kallsyms(m, vmcoreinfo);
  GuestProfile profile;
  profile.btf_vmlinux = read_btf(m, symbols);
  profile.kernel_release = release_of(m, vmcoreinfo, symbols);
  profile.kallsyms = std::move(symbols.kallsyms);
  // Modules are a bonus: the kernel image's symbols open the dump without them.
  try {
    ModuleText modules = read_module_text(memory, vmcoreinfo, profile);
    profile.kallsyms += modules.kallsyms;
    profile.modules = std::move(modules.modules);
  } catch (const Error&) {
  } catch (const MemoryFault&) {
  }
  return profile;
}

}  // namespace immortal
