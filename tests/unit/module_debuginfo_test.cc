// Source lines for module code: the guest's record of where a module's sections went (read from
// a synthetic kernel, hostile contents included), the search for .ko files, and .ko files that
// are not what they claim. A [.fixture] case maps real module code of a Debian 6.1 dump.
#include "base/error.h"
#include "kernel/kernel.h"
#include "kernel/modules.h"
#include "memory/elf_core.h"
#include "profile/guest_profile.h"
#include "support/fake_kernel.h"
#include "types/module_debuginfo.h"

#include <catch2/catch.hpp>

#include <elf.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>

using namespace immortal;
using namespace immortal::test;

namespace {

namespace fs = std::filesystem;

// Layout of the synthetic struct module_sect_attrs (offsets are the test's own).
constexpr std::uint64_t kSectAttrsField = 0x180;  // module.sect_attrs
constexpr std::uint64_t kCount = 0x10, kArray = 0x18, kStride = 0x40, kName = 0x0, kAddress = 0x38;

std::unique_ptr<FakeTypes> types_with_sect_attrs() {
  auto t = linux_like_types();
  t->add("module", "sect_attrs", kSectAttrsField);
  t->add("module_sect_attrs", "nsections", kCount, 4);
  t->add("module_sect_attrs", "attrs", kArray, 0);
  t->add_size("module_sect_attr", kStride);
  t->add("module_sect_attr", "battr.attr.name", kName);
  t->add("module_sect_attr", "address", kAddress);
  return t;
}

std::unique_ptr<Kernel> kernel_over(VectorMemory& ram, std::unique_ptr<TypeInfo> types) {
  map_kernel_image(ram);
  KernelLayout layout;
  layout.page_table = 0x1000;
  return Kernel::assemble(ram, layout, SymbolTable::from_kallsyms("ffffffff81000000 T _stext\n"), std::move(types),
                          "6.1.0-test");
}

// struct module at physical 0x30000 whose sect_attrs (at 0x40000) list the given sections;
// names are written from 0x50000 on.
struct SectionEntry {
  std::string name;
  std::uint64_t address;
};
void put_sections(VectorMemory& ram, const std::vector<SectionEntry>& entries, std::uint32_t count) {
  const std::uint64_t mod = 0x30000, attrs = 0x40000;
  std::uint64_t names = 0x50000;
  ram.put<std::uint64_t>(mod + kSectAttrsField, kva(attrs));
  ram.put<std::uint32_t>(attrs + kCount, count);
  for (std::size_t i = 0; i < entries.size(); ++i) {
    std::uint64_t entry = attrs + kArray + i * kStride;
    ram.put<std::uint64_t>(entry + kName, kva(names));
    ram.put<std::uint64_t>(entry + kAddress, entries[i].address);
    ram.put_bytes(names, entries[i].name + std::string(1, '\0'));
    names += entries[i].name.size() + 1;
  }
}

ModuleInfo immortal_fault_module() {
  ModuleInfo m;
  m.address = kva(0x30000);
  m.name = "immortal_fault";
  m.base = 0xffffffffc0600000ull;
  m.size = 0x4000;
  m.text_size = 0x1000;
  return m;
}

// A scratch directory, removed again at the end of the test.
struct ScratchDir {
  fs::path path;
  ScratchDir() {
    std::string pattern = (fs::temp_directory_path() / "immortal-modules-XXXXXX").string();
    REQUIRE(mkdtemp(pattern.data()));
    path = pattern;
  }
  ~ScratchDir() {
    std::error_code ec;
    fs::remove_all(path, ec);
  }
  void write(const std::string& relative, const std::string& bytes) const {
    fs::create_directories((path / relative).parent_path());
    std::ofstream(path / relative, std::ios::binary) << bytes;
  }
};

// An ELF header claiming to be an x86-64 relocatable file, with section headers wherever the
// caller says (nowhere sensible).
std::string elf_header(std::uint64_t shoff, std::uint16_t shnum, std::uint16_t shstrndx) {
  Elf64_Ehdr h{};
  std::memcpy(h.e_ident, ELFMAG, SELFMAG);
  h.e_ident[EI_CLASS] = ELFCLASS64;
  h.e_ident[EI_DATA] = ELFDATA2LSB;
  h.e_ident[EI_VERSION] = EV_CURRENT;
  h.e_type = ET_REL;
  h.e_machine = EM_X86_64;
  h.e_version = EV_CURRENT;
  h.e_ehsize = sizeof h;
  h.e_shentsize = sizeof(Elf64_Shdr);
  h.e_shoff = shoff;
  h.e_shnum = shnum;
  h.e_shstrndx = shstrndx;
  return std::string(reinterpret_cast<const char*>(&h), sizeof h);
}

// Section headers that make no sense: sizes and offsets beyond the file, a string table that
// is not one, a section claiming to be code.
std::string hostile_section_headers() {
  std::string out = elf_header(sizeof(Elf64_Ehdr), 4, 3);
  Elf64_Shdr s[4]{};
  s[1].sh_type = SHT_PROGBITS;
  s[1].sh_flags = SHF_ALLOC | SHF_EXECINSTR;
  s[1].sh_name = 1;
  s[1].sh_offset = 0xffffffff00ull;
  s[1].sh_size = 0x7fffffffffffffffull;
  s[2].sh_type = SHT_RELA;
  s[2].sh_info = 1;
  s[2].sh_link = 77;
  s[2].sh_offset = 0x10;
  s[2].sh_size = 0x1000000;
  s[2].sh_entsize = sizeof(Elf64_Rela);
  s[3].sh_type = SHT_STRTAB;
  s[3].sh_offset = 0x20;
  s[3].sh_size = 0xffffff;
  out.append(reinterpret_cast<const char*>(s), sizeof s);
  return out;
}

}  // namespace

TEST_CASE("module sections are read from sect_attrs, hostile entries left out", "[module_debuginfo]") {
  VectorMemory ram(1 << 22);
  auto kernel = kernel_over(ram, types_with_sect_attrs());
  const std::uint64_t mod = kva(0x30000);

  SECTION("well-formed entries give every section's address") {
    put_sections(ram, {{".text", 0xffffffffc0600000ull}, {".text.unlikely", 0xffffffffc0600323ull}, {".data", 0xffffffffc0602000ull}},
                 3);
    auto sections = module_section_addresses(*kernel, mod);
    CHECK(sections == std::map<std::string, std::uint64_t>{{".text", 0xffffffffc0600000ull},
                                                           {".text.unlikely", 0xffffffffc0600323ull},
                                                           {".data", 0xffffffffc0602000ull}});
  }
  SECTION("no sect_attrs yet: no sections") {
    CHECK(module_section_addresses(*kernel, mod).empty());
  }
  SECTION("unprintable, overlong, empty and unreadable names are skipped; duplicates keep the first") {
    put_sections(ram,
                 {{".text", 1}, {"bad\x01name", 2}, {std::string(200, 'a'), 3}, {"", 4}, {"esc\x1b[2J", 5}, {".text", 6},
                  {".data", 7}},
                 8);
    // The eighth entry's name points nowhere.
    ram.put<std::uint64_t>(0x40000 + kArray + 7 * kStride + kName, 0x1234);
    auto sections = module_section_addresses(*kernel, mod);
    CHECK(sections == std::map<std::string, std::uint64_t>{{".text", 1}, {".data", 7}});
  }
  SECTION("an absurd count is bounded, and an array running into unmapped memory ends the walk") {
    put_sections(ram, {{".text", 1}}, 0xffffffffu);
    CHECK(module_section_addresses(*kernel, mod) == std::map<std::string, std::uint64_t>{{".text", 1}});
    // The same with the array at the very end of RAM: entries beyond it cannot be read.
    const std::uint64_t attrs = (1 << 22) - kArray - kStride;
    ram.put<std::uint64_t>(0x30000 + kSectAttrsField, kva(attrs));
    ram.put<std::uint32_t>(attrs + kCount, 1000);
    ram.put<std::uint64_t>(attrs + kArray + kName, kva(0x50000));  // ".text" from above
    ram.put<std::uint64_t>(attrs + kArray + kAddress, 9);
    CHECK(module_section_addresses(*kernel, mod) == std::map<std::string, std::uint64_t>{{".text", 9}});
  }
  SECTION("a sect_attrs pointer into unmapped memory is a fault, not a crash") {
    ram.put<std::uint64_t>(0x30000 + kSectAttrsField, 0xffff888000000000ull);
    CHECK_THROWS_AS(module_section_addresses(*kernel, mod), MemoryFault);
  }
}

TEST_CASE("module sections need the kernel's types to describe sect_attrs", "[module_debuginfo]") {
  VectorMemory ram(1 << 22);
  auto kernel = kernel_over(ram, linux_like_types());
  CHECK_THROWS_AS(module_section_addresses(*kernel, kva(0x30000)), Error);
  // source_line turns that into no line.
  ScratchDir dir;
  dir.write("immortal_fault.ko", "not an ELF file");
  ModuleDebugInfo debug(dir.path.string());
  CHECK_FALSE(debug.source_line(*kernel, immortal_fault_module(), 0xffffffffc0600010ull).has_value());
}

TEST_CASE(".ko files are found anywhere below the directory, '-' and '_' alike", "[module_debuginfo]") {
  ScratchDir dir;
  dir.write("kernel/drivers/misc/immortal-fault.ko", "x");
  dir.write("debug/immortal_fault.ko.debug", "x");
  dir.write("a/b/c/d/immortal_fault.ko", "x");
  dir.write("immortal_fault.o", "x");
  dir.write("immortal_fault.mod.c", "x");
  dir.write("immortal_fault.ko.xz.part", "x");
  dir.write("other.ko", "x");
  fs::create_directories(dir.path / "linked");
  fs::create_symlink(dir.path, dir.path / "linked" / "loop");  // not followed

  ModuleDebugInfo debug(dir.path.string());
  CHECK(debug.candidates("immortal_fault") == std::vector<std::string>{(dir.path / "debug/immortal_fault.ko.debug").string(),
                                                                      (dir.path / "a/b/c/d/immortal_fault.ko").string(),
                                                                      (dir.path / "kernel/drivers/misc/immortal-fault.ko").string()});
  CHECK(debug.candidates("immortal-fault").size() == 3);
  CHECK(debug.candidates("other") == std::vector<std::string>{(dir.path / "other.ko").string()});
  CHECK(debug.candidates("../other").empty());
  CHECK(debug.candidates("").empty());
}

TEST_CASE("a missing directory or unusable .ko files give no source line", "[module_debuginfo]") {
  VectorMemory ram(1 << 22);
  auto kernel = kernel_over(ram, types_with_sect_attrs());
  put_sections(ram, {{".text", 0xffffffffc0600000ull}}, 1);
  ModuleInfo module = immortal_fault_module();
  const std::uint64_t pc = 0xffffffffc0600010ull;

  SECTION("missing directory") {
    ModuleDebugInfo debug("/nonexistent/immortal/modules");
    CHECK(debug.candidates("immortal_fault").empty());
    CHECK_FALSE(debug.source_line(*kernel, module, pc).has_value());
  }
  SECTION("a file where the directory should be") {
    ScratchDir dir;
    dir.write("plain", "x");
    ModuleDebugInfo debug((dir.path / "plain").string());
    CHECK_FALSE(debug.source_line(*kernel, module, pc).has_value());
  }
  SECTION("garbage, empty, truncated and hostile .ko files, and an executable that is no module") {
    for (const std::string& bytes :
         {std::string("\x7f" "ELF garbage garbage garbage"), std::string(), elf_header(0, 0, 0),
          elf_header(0xffffffffffff0000ull, 0xffff, 0xfffe), elf_header(sizeof(Elf64_Ehdr), 60000, 5),
          hostile_section_headers()}) {
      ScratchDir dir;
      dir.write("immortal_fault.ko", bytes);
      ModuleDebugInfo debug(dir.path.string());
      CHECK(debug.candidates("immortal_fault").size() == 1);
      CHECK_FALSE(debug.source_line(*kernel, module, pc).has_value());
      CHECK_FALSE(debug.source_line(*kernel, module, pc).has_value());  // the failure is remembered, still no line
    }
    ScratchDir dir;
    fs::copy_file("/proc/self/exe", dir.path / "immortal_fault.ko");  // ET_DYN with DWARF: not a module
    ModuleDebugInfo debug(dir.path.string());
    CHECK_FALSE(debug.source_line(*kernel, module, pc).has_value());
  }
  SECTION("an address outside the module's code") {
    ScratchDir dir;
    dir.write("immortal_fault.ko", "x");
    ModuleDebugInfo debug(dir.path.string());
    CHECK_FALSE(debug.source_line(*kernel, module, module.base + module.text_size).has_value());
    CHECK_FALSE(debug.source_line(*kernel, module, 0xffffffff81000000ull).has_value());
  }
}

// The real thing: module code of a QEMU dump of a Debian 6.1 guest, against the module's .ko
// as built by scripts/build-guest-image (build/fault-module/, or $IMMORTAL_MODULES_DIR).
// Run with: unit-tests "[.fixture]" (skipped when the fixture is absent).
TEST_CASE("module code of a Debian 6.1 dump maps to the lines of its source", "[.fixture][module_debuginfo]") {
  const std::string core_path = "/tmp/fixtures/v1.core", profile_dir = "/tmp/fixtures/v1-profile";
  // __FILE__ is relative to the build directory, where the tests run.
  const char* env = std::getenv("IMMORTAL_MODULES_DIR");
  fs::path modules_dir = env ? fs::path(env) : fs::path(__FILE__).parent_path() / "../../build/fault-module";
  fs::path ko = modules_dir / "immortal_fault.ko";
  if (!fs::exists(core_path) || !fs::exists(profile_dir) || !fs::exists(ko)) {
    WARN("no fixture at " << core_path << " or no " << ko);
    return;
  }
  auto core = ElfCoreMemory::open(core_path);
  GuestProfile profile = GuestProfile::load(profile_dir);
  auto kernel = Kernel::open(*core, profile, core->vmcoreinfo());
  ModuleInfo module;
  for (const auto& m : read_modules(*kernel).modules)
    if (m.name == "immortal_fault") module = m;
  REQUIRE(module.address != 0);

  auto sections = module_section_addresses(*kernel, module.address);
  REQUIRE(sections.count(".text"));
  CHECK(sections[".text"] == module.base);
  CHECK(sections.count(".text.unlikely"));
  CHECK(sections.count(".note.gnu.build-id"));

  // Every function of the module, whichever section it is in: its entry is the line of its
  // opening brace, just after the line naming it.
  std::vector<std::string> source;
  {
    std::ifstream in(modules_dir / "immortal_fault.c");
    for (std::string line; std::getline(in, line);) source.push_back(line);
  }
  REQUIRE(!source.empty());
  ModuleDebugInfo debug(modules_dir.string());
  std::istringstream kallsyms(profile.kallsyms);
  int checked = 0;
  for (std::string line; std::getline(kallsyms, line);) {
    if (line.find("\t[immortal_fault]") == std::string::npos) continue;
    std::istringstream fields(line);
    std::string address, type, name;
    fields >> address >> type >> name;
    // Outlined parts (name.cold) begin with whatever code the compiler moved there.
    if ((type != "t" && type != "T") || name.rfind("immortal_fault_", 0) != 0 || name.find('.') != std::string::npos)
      continue;
    std::uint64_t pc = std::stoull(address, nullptr, 16);
    INFO(name << " at " << address);
    auto where = debug.source_line(*kernel, module, pc);
    REQUIRE(where.has_value());
    auto colon = where->rfind(':');
    CHECK(where->substr(0, colon).ends_with("immortal_fault.c"));
    std::size_t number = std::stoul(where->substr(colon + 1));
    REQUIRE(number >= 2);
    REQUIRE(number <= source.size());
    CHECK(source[number - 2].find(name) != std::string::npos);
    ++checked;
  }
  CHECK(checked >= 10);
  WARN(checked << " functions of immortal_fault mapped to their source lines");

  // A few well-known places, as `addr2line -j SECTION -e immortal_fault.ko OFFSET` gives them.
  std::uint64_t timer_fn = kernel->symbols().address_in("immortal_fault_timer_fn", "immortal_fault").value_or(0);
  REQUIRE(timer_fn);
  CHECK(debug.source_line(*kernel, module, timer_fn)->ends_with("immortal_fault.c:105"));
  CHECK(debug.source_line(*kernel, module, sections[".text.unlikely"])->ends_with("immortal_fault.c:68"));
  // immortal_fault_write.cold starts with an inlined strlen, at .text.unlikely+0x355.
  CHECK(debug.source_line(*kernel, module, sections[".text.unlikely"] + 0x355)->ends_with("include/linux/fortify-string.h:199"));

  // Damaged copies of the .ko: no crash, and never a line the intact file would not give.
  std::ifstream in(ko, std::ios::binary);
  std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  std::mt19937 random(1);
  for (int round = 0; round < 40; ++round) {
    std::string damaged = bytes;
    if (round % 4 == 0) {
      damaged.resize(random() % damaged.size());
    } else {
      for (int i = 0; i < 1 + round; ++i) damaged[random() % damaged.size()] = static_cast<char>(random());
    }
    ScratchDir dir;
    dir.write("immortal_fault.ko", damaged);
    ModuleDebugInfo damaged_debug(dir.path.string());
    for (std::uint64_t pc : {timer_fn, sections[".text.unlikely"]}) (void)damaged_debug.source_line(*kernel, module, pc);
  }

  // Another build of the module (here: the build id changed) gives no line rather than a wrong one.
  std::string other = bytes;
  auto note = other.find("GNU");
  REQUIRE(note != std::string::npos);
  other[note + 4] = static_cast<char>(other[note + 4] ^ 0xff);
  ScratchDir dir;
  dir.write("immortal_fault.ko", other);
  ModuleDebugInfo other_debug(dir.path.string());
  CHECK_FALSE(other_debug.source_line(*kernel, module, timer_fn).has_value());
}
