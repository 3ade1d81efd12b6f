#include "types/module_debuginfo.h"

#include "base/error.h"

#include <dwarf.h>
#include <elfutils/libdw.h>
#include <elfutils/libdwfl.h>
#include <gelf.h>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <span>
#include <system_error>
#include <utility>

namespace immortal {

namespace {

// Bounds on what the guest and the directory may make us do. A module has one sect_attrs
// entry per non-empty allocated section of its .ko (a few dozen; thousands with
// -ffunction-sections); section names are short (".text.unlikely", "__ksymtab_strings").
constexpr std::uint32_t kMaxSections = 4096;
constexpr std::size_t kMaxSectionName = 128;
constexpr std::size_t kMaxDirectoryEntries = 2'000'000;  // a whole kernel build tree fits
constexpr std::size_t kMaxCandidates = 8;                // .ko files tried per module
constexpr std::size_t kMaxSourcePath = 4096;

bool plausible_section_name(const std::string& name) {
  if (name.empty() || name.size() > kMaxSectionName) return false;
  return std::all_of(name.begin(), name.end(), [](char c) { return c > 0x20 && c < 0x7f; });
}

// Module names and file names: the kernel's module name uses '_' where the file may have '-'
// (kernel/module/main.c, and modprobe's own matching).
std::string normalise(std::string name) {
  std::replace(name.begin(), name.end(), '-', '_');
  return name;
}

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() > suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

// libdwfl callbacks: the .ko carries its own DWARF; never look for other files on this host
// (a /usr/lib/debug of the host's kernel would be the wrong one).
int no_elf(Dwfl_Module*, void**, const char*, Dwarf_Addr, char**, Elf**) { return -1; }
int no_debuginfo(Dwfl_Module*, void**, const char*, Dwarf_Addr, const char*, const char*, GElf_Word, char**) {
  return -1;
}
const Dwfl_Callbacks kOfflineCallbacks = {
    .find_elf = no_elf,
    .find_debuginfo = no_debuginfo,
    .section_address = dwfl_offline_section_address,
    .debuginfo_path = nullptr,
};

}  // namespace

std::map<std::string, std::uint64_t> module_section_addresses(const Kernel& kernel, std::uint64_t module_address) {
  const auto& m = kernel.memory();
  const auto& t = kernel.types();
  // Linux 6.1 kernel/module/sysfs.c (CONFIG_KALLSYMS):
  //   struct module_sect_attr  { struct bin_attribute battr; unsigned long address; };
  //   struct module_sect_attrs { struct attribute_group grp; unsigned int nsections;
  //                              struct module_sect_attr attrs[]; };
  // add_sect_attrs() fills one entry per non-empty SHF_ALLOC section, battr.attr.name a
  // kstrdup of the section's name, address its sh_addr after layout.
  std::uint64_t attrs = m.read_u64(module_address + t.offset_of("module", "sect_attrs"));
  std::map<std::string, std::uint64_t> sections;
  if (attrs == 0) return sections;
  std::uint64_t count_offset = t.offset_of("module_sect_attrs", "nsections");
  std::uint64_t array_offset = t.offset_of("module_sect_attrs", "attrs");
  std::uint64_t stride = t.require_size("module_sect_attr");
  std::uint64_t name_offset = t.offset_of("module_sect_attr", "battr.attr.name");
  std::uint64_t address_offset = t.offset_of("module_sect_attr", "address");
  if (stride < 16 || stride > 4096)
    fail(ExitCode::bad_input, "implausible size {} of struct module_sect_attr in the kernel's types", stride);
  std::uint32_t count = std::min(m.read_value<std::uint32_t>(attrs + count_offset), kMaxSections);
  for (std::uint32_t i = 0; i < count; ++i) {
    std::uint64_t entry = attrs + array_offset + i * stride, name_pointer = 0, address = 0;
    try {
      name_pointer = m.read_u64(entry + name_offset);
      address = m.read_u64(entry + address_offset);
    } catch (const MemoryFault&) {
      break;  // the array itself ends in unreadable memory: keep what came before
    }
    std::string name;
    try {
      name = m.read_cstring(name_pointer, kMaxSectionName + 1);
    } catch (const MemoryFault&) {
      continue;
    }
    if (plausible_section_name(name)) sections.emplace(name, address);
  }
  return sections;
}

struct ModuleDebugInfo::LoadedKo {
  struct Section {
    std::uint64_t size = 0;
    std::uint64_t dwfl_address = 0;  // where libdwfl laid the section out
    bool code = false;
  };
  Dwfl* dwfl = nullptr;
  Dwfl_Module* module = nullptr;
  std::map<std::string, Section> sections;  // allocated, non-empty; first of duplicate names
  std::vector<unsigned char> build_id;
  std::uint64_t build_id_address = 0;  // in libdwfl's layout

  ~LoadedKo() {
    if (dwfl) dwfl_end(dwfl);
  }
  // The section holding a libdwfl address, with the offset into it.
  std::optional<std::pair<std::string, std::uint64_t>> section_of(std::uint64_t address) const {
    for (const auto& [name, s] : sections)
      if (address >= s.dwfl_address && address - s.dwfl_address < s.size) return std::pair(name, address - s.dwfl_address);
    return std::nullopt;
  }
};

namespace {

// Opens one .ko (or .ko.debug): relocatable x86-64 ELF with DWARF, or nothing.
std::unique_ptr<ModuleDebugInfo::LoadedKo> open_ko(const std::string& path) {
  auto ko = std::make_unique<ModuleDebugInfo::LoadedKo>();
  ko->dwfl = dwfl_begin(&kOfflineCallbacks);
  if (!ko->dwfl) return nullptr;
  // For ET_REL files, dwfl_report_offline gives every SHF_ALLOC section an address of its own
  // (dwfl_offline_section_address) and applies the file's relocations to the DWARF, so line
  // tables read back in that layout.
  ko->module = dwfl_report_offline(ko->dwfl, "module", path.c_str(), -1);
  if (!ko->module || dwfl_report_end(ko->dwfl, nullptr, nullptr) != 0) return nullptr;
  GElf_Addr bias = 0;
  Elf* elf = dwfl_module_getelf(ko->module, &bias);
  GElf_Ehdr ehdr;
  std::size_t shstrndx = 0;
  if (!elf || !gelf_getehdr(elf, &ehdr) || ehdr.e_type != ET_REL || ehdr.e_machine != EM_X86_64 ||
      elf_getshdrstrndx(elf, &shstrndx) != 0)
    return nullptr;
  for (Elf_Scn* scn = elf_nextscn(elf, nullptr); scn; scn = elf_nextscn(elf, scn)) {
    GElf_Shdr shdr;
    if (!gelf_getshdr(scn, &shdr) || !(shdr.sh_flags & SHF_ALLOC) || shdr.sh_size == 0) continue;
    const char* name = elf_strptr(elf, shstrndx, shdr.sh_name);
    if (!name) continue;
    bool code = (shdr.sh_flags & SHF_EXECINSTR) != 0;
    ko->sections.emplace(name, ModuleDebugInfo::LoadedKo::Section{shdr.sh_size, shdr.sh_addr + bias, code});
  }
  Dwarf_Addr dwarf_bias = 0;
  if (ko->sections.empty() || !dwfl_module_getdwarf(ko->module, &dwarf_bias)) return nullptr;
  const unsigned char* bits = nullptr;
  GElf_Addr bits_address = 0;
  int length = dwfl_module_build_id(ko->module, &bits, &bits_address);
  if (length > 0 && length <= 64 && bits) {
    ko->build_id.assign(bits, bits + length);
    ko->build_id_address = bits_address;
  }
  return ko;
}

// The kernel keeps a module's .note.gnu.build-id in its memory (an allocated section like any
// other): compare it with the file's, so that another build of the same module gives no line
// rather than a wrong one. Unverifiable (no note on either side, unreadable) counts as a match.
bool same_build(const Kernel& kernel, const ModuleDebugInfo::LoadedKo& ko,
                const std::map<std::string, std::uint64_t>& guest_sections) {
  if (ko.build_id.empty()) return true;
  auto where = ko.section_of(ko.build_id_address);
  if (!where) return true;
  auto guest = guest_sections.find(where->first);
  if (guest == guest_sections.end()) return true;
  std::vector<unsigned char> in_guest(ko.build_id.size());
  try {
    kernel.memory().read(guest->second + where->second, std::as_writable_bytes(std::span(in_guest)));
  } catch (const MemoryFault&) {
    return true;
  }
  return in_guest == ko.build_id;
}

std::optional<std::string> line_at(const ModuleDebugInfo::LoadedKo& ko, Dwarf_Addr address) {
  Dwfl_Line* line = dwfl_module_getsrc(ko.module, address);
  if (!line) return std::nullopt;
  int number = 0;
  const char* file = dwfl_lineinfo(line, nullptr, &number, nullptr, nullptr, nullptr);
  if (!file || !*file || number <= 0) return std::nullopt;
  std::string path(file, strnlen(file, kMaxSourcePath));
  // In-tree modules name their sources relative to the kernel tree (the compilation
  // directory); libdwfl joins the two. Give back the tree-relative name, as for vmlinux.
  Dwarf_Attribute attr;
  Dwarf_Die* cu = dwfl_linecu(line);
  const char* comp_dir = cu ? dwarf_formstring(dwarf_attr(cu, DW_AT_comp_dir, &attr)) : nullptr;
  if (comp_dir && *comp_dir) {
    std::string prefix(comp_dir, strnlen(comp_dir, kMaxSourcePath));
    if (prefix.back() != '/') prefix += '/';
    if (path.size() > prefix.size() && path.compare(0, prefix.size(), prefix) == 0) path.erase(0, prefix.size());
  }
  // The file's bytes, not ours: no control characters into reports and terminals.
  for (char& c : path)
    if (static_cast<unsigned char>(c) < 0x20 || c == 0x7f) c = '?';
  return path + ":" + std::to_string(number);
}

}  // namespace

ModuleDebugInfo::ModuleDebugInfo(std::string modules_dir) : dir_(std::move(modules_dir)) {}
ModuleDebugInfo::~ModuleDebugInfo() = default;

void ModuleDebugInfo::index() {
  if (indexed_) return;
  indexed_ = true;
  namespace fs = std::filesystem;
  std::error_code ec;
  // Directory symlinks are not followed (no loops); unreadable subdirectories are skipped.
  fs::recursive_directory_iterator it(dir_, fs::directory_options::skip_permission_denied, ec);
  std::size_t visited = 0;
  for (; !ec && it != fs::recursive_directory_iterator(); it.increment(ec)) {
    if (++visited > kMaxDirectoryEntries) break;
    std::string file = it->path().filename().string();
    std::string stem;
    if (ends_with(file, ".ko.debug")) stem = file.substr(0, file.size() - 9);
    else if (ends_with(file, ".ko")) stem = file.substr(0, file.size() - 3);
    else continue;
    std::error_code file_ec;
    if (it->is_regular_file(file_ec)) files_[normalise(stem)].push_back(it->path().string());
  }
  // Separate debug files first (their .ko may be stripped), then by path: the same order on
  // every run, whatever order the directory gave.
  for (auto& [name, paths] : files_)
    std::sort(paths.begin(), paths.end(), [](const std::string& a, const std::string& b) {
      bool da = ends_with(a, ".ko.debug"), db = ends_with(b, ".ko.debug");
      return da != db ? da : a < b;
    });
}

std::vector<std::string> ModuleDebugInfo::candidates(const std::string& module_name) {
  index();
  auto it = files_.find(normalise(module_name));
  if (it == files_.end()) return {};
  std::vector<std::string> paths = it->second;
  if (paths.size() > kMaxCandidates) paths.resize(kMaxCandidates);
  return paths;
}

const std::vector<std::unique_ptr<ModuleDebugInfo::LoadedKo>>& ModuleDebugInfo::load(const std::string& module_name) {
  std::string key = normalise(module_name);
  if (auto it = loaded_.find(key); it != loaded_.end()) return it->second;
  std::vector<std::unique_ptr<LoadedKo>> usable;
  for (const auto& path : candidates(module_name))
    if (auto ko = open_ko(path)) usable.push_back(std::move(ko));
  return loaded_[key] = std::move(usable);
}

std::optional<std::string> ModuleDebugInfo::source_line(const Kernel& kernel, const ModuleInfo& module, std::uint64_t pc) {
  if (!module.contains_text(pc)) return std::nullopt;
  try {
    const auto& files = load(module.name);
    if (files.empty()) return std::nullopt;
    auto guest_sections = module_section_addresses(kernel, module.address);
    for (const auto& ko : files) {
      // The code section of the guest's module that holds pc, and the same place in libdwfl's
      // layout of the file. Section sizes come from the file: the guest keeps none.
      std::optional<Dwarf_Addr> address;
      for (const auto& [name, guest_address] : guest_sections) {
        auto s = ko->sections.find(name);
        if (s != ko->sections.end() && s->second.code && pc >= guest_address && pc - guest_address < s->second.size) {
          address = s->second.dwfl_address + (pc - guest_address);
          break;
        }
      }
      if (!address || !same_build(kernel, *ko, guest_sections)) continue;
      if (auto line = line_at(*ko, *address)) return line;
    }
  } catch (const MemoryFault&) {
  } catch (const Error&) {
  }
  return std::nullopt;
}

}  // namespace immortal
