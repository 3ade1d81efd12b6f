// The introspection core on synthetic kernels and files: correct results on well-formed input,
// bounded and honest results on hostile input (cycles, wild pointers, absurd sizes).
#include "base/error.h"
#include "kernel/kernel.h"
#include "kernel/list_walk.h"
#include "kernel/modules.h"
#include "kernel/kernel_support.h"
#include "kernel/orc_unwind.h"
#include "kernel/page_type.h"
#include "dump/panic_line.h"
#include "base/budgets.h"
#include "kernel/printk.h"
#include "kernel/symbols.h"
#include "kernel/tasks.h"
#include "kernel/vmcoreinfo.h"
#include "types/dwarf_types.h"
#include "memory/elf_core.h"
#include "profile/guest_profile.h"
#include "profile/packed_profile.h"
#include "base/zstd_frame.h"
#include "support/fake_kernel.h"
#include "x86_64/page_tables.h"

#include <catch2/catch.hpp>
#include <fmt/format.h>

#include <elf.h>
#include <unistd.h>

#include <algorithm>
#include <cstddef>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <set>

using namespace immortal;
using namespace immortal::test;


namespace {

constexpr std::string_view kKallsyms =
    "0000000000000000 A fixed_percpu_data\n"
    "000000000001fbc0 A current_task\n"
    "ffffffff81000000 T _stext\n"
    "ffffffff81000100 T start_kernel\n"
    "ffffffff81000200 t do_idle\n"
    "ffffffff80800000 D init_task\n"
    "ffffffff80100000 D modules\n"
    "ffffffff80a00000 D prb\n"
    "garbage line\n"
    "ffffffffc0600000 t fault_fn\t[immortal_fault]\n"
    "ffffffffc0600040 t other_fn\t[immortal_fault]\n";

std::unique_ptr<Kernel> synthetic_kernel(VectorMemory& ram, const std::string& extra_symbols = "") {
  map_kernel_image(ram);
  KernelLayout layout;
  layout.page_table = 0x1000;
  return Kernel::assemble(ram, layout, SymbolTable::from_kallsyms(std::string(kKallsyms) + extra_symbols),
                          linux_like_types(), "6.1.0-test");
}

// Task at physical p: pid, comm, parent, linked after prev (tasks.next/prev at +0x100).
void put_task(VectorMemory& ram, std::uint64_t p, int pid, const std::string& comm, std::uint64_t parent_phys) {
  ram.put<std::int32_t>(p + 0x150, pid);
  ram.put<std::int32_t>(p + 0x154, pid);
  ram.put<std::uint64_t>(p + 0x160, kva(parent_phys));
  ram.put_bytes(p + 0x200, comm + std::string(1, '\0'));
}
void link(VectorMemory& ram, std::uint64_t from_phys_node, std::uint64_t to_phys_node) {
  ram.put<std::uint64_t>(from_phys_node, kva(to_phys_node));
}

// ORC entry i of the tables at physical 0x300000 (relative ips) and 0x310000 (6-byte entries):
// it covers code from ip_phys; bits is the u16 of register and type bitfields.
void put_orc_entry(VectorMemory& ram, int i, std::uint64_t ip_phys, std::int16_t sp_offset, std::uint16_t bits) {
  std::uint64_t slot = 0x300000 + 4 * static_cast<std::uint64_t>(i);
  ram.put<std::int32_t>(slot, static_cast<std::int32_t>(static_cast<std::int64_t>(ip_phys) - static_cast<std::int64_t>(slot)));
  ram.put<std::int16_t>(0x310000 + 6 * i, sp_offset);
  ram.put<std::int16_t>(0x310000 + 6 * i + 2, 0);
  ram.put<std::uint16_t>(0x310000 + 6 * i + 4, bits);
}

}  // namespace

TEST_CASE("page-table walks follow 4 KiB, 2 MiB and 1 GiB pages and stop at holes", "[introspection]") {
  VectorMemory ram(1 << 22);
  map_kernel_image(ram);
  CHECK(x86_64::translate(ram, 0x1000, kKernelBase + 0x12345, false) == 0x12345u);
  CHECK_FALSE(x86_64::translate(ram, 0x1000, 0xffff888000000000ull, false).has_value());
  // 5-level paging: one more table on top (PML5 at 0x7000, its last entry → the PML4 above).
  ram.put<std::uint64_t>(0x7000 + 511 * 8, 0x1000 | 0x3);
  CHECK(x86_64::translate(ram, 0x7000, kKernelBase + 0x12345, true) == 0x12345u);
  CHECK_FALSE(x86_64::translate(ram, 0x7000, 0xff11000000000000ull, true).has_value());
  // A 4-level walk to a 4 KiB page: PML4[0] → 0x3000 → 0x4000 → 0x5000 (2 MiB page) and a PT.
  ram.put<std::uint64_t>(0x1000, 0x3000 | 1);
  ram.put<std::uint64_t>(0x3000, 0x4000 | 1);
  ram.put<std::uint64_t>(0x4000, 0x200000 | 0x81);          // PD[0]: 2 MiB page at 2 MiB
  ram.put<std::uint64_t>(0x4000 + 8, 0x6000 | 1);           // PD[1]: page table
  ram.put<std::uint64_t>(0x6000 + 3 * 8, 0x9000 | 1);       // PT[3] → 0x9000
  CHECK(x86_64::translate(ram, 0x1000, 0x1234, false) == 0x201234u);
  CHECK(x86_64::translate(ram, 0x1000, 0x200000 + 3 * 0x1000 + 0x10, false) == 0x9010u);
  CHECK_FALSE(x86_64::translate(ram, 0x1000, 0x200000 + 4 * 0x1000, false).has_value());
  // A table pointer outside RAM is a MemoryFault, which KernelMemory reports as unmapped.
  ram.put<std::uint64_t>(0x4000 + 16, 0x7fff0000000ull | 1);
  CHECK_THROWS_AS(x86_64::translate(ram, 0x1000, 0x400000, false), MemoryFault);
  KernelMemory km(ram, KernelLayout{0x1000, false, 0, 0, 0});
  CHECK_FALSE(km.to_physical(0x400000).has_value());
  CHECK_THROWS_AS(km.read_u64(0x400000), MemoryFault);
}

TEST_CASE("tasks are read through the kernel's own list, and hostile lists are stopped", "[introspection]") {
  VectorMemory ram(1 << 25);
  auto kernel = synthetic_kernel(ram);
  const std::uint64_t init = 0x800000, a = 0x10000, b = 0x20000;
  put_task(ram, init, 0, "swapper/0", init);
  put_task(ram, a, 1, "init", init);
  put_task(ram, b, 42, "worker-alpha", a);

  SECTION("a well-formed ring") {
    link(ram, init + 0x100, a + 0x100);
    link(ram, a + 0x100, b + 0x100);
    link(ram, b + 0x100, init + 0x100);
    TaskList list = read_tasks(*kernel);
    CHECK(list.walk.complete);
    REQUIRE(list.tasks.size() == 3);
    CHECK(list.tasks[2].pid == 42);
    CHECK(list.tasks[2].comm == "worker-alpha");
    CHECK(list.tasks[2].parent_pid == 1);
    CHECK(list.tasks[2].state == 'R');
  }
  SECTION("a cycle that never returns to the head") {
    link(ram, init + 0x100, a + 0x100);
    link(ram, a + 0x100, b + 0x100);
    link(ram, b + 0x100, a + 0x100);
    TaskList list = read_tasks(*kernel);
    CHECK_FALSE(list.walk.complete);
    CHECK_THAT(list.walk.problem, Catch::Contains("loops"));
    CHECK(list.tasks.size() == 3);
  }
  SECTION("a pointer into the void") {
    link(ram, init + 0x100, a + 0x100);
    ram.put<std::uint64_t>(a + 0x100, 0xffffc90000001000ull);
    TaskList list = read_tasks(*kernel);
    CHECK_FALSE(list.walk.complete);
    CHECK_THAT(list.walk.problem, Catch::Contains("unreadable"));
  }
  SECTION("a comm without its NUL and an absurd count are bounded") {
    ram.put_bytes(b + 0x200, std::string(16, 'x') + "overflowing");
    link(ram, init + 0x100, b + 0x100);
    link(ram, b + 0x100, init + 0x100);
    CHECK(read_tasks(*kernel).tasks.back().comm.size() == 16);
    // Ten thousand tasks in a ring; a limit of 100 stops early and says so.
    std::uint64_t prev = init + 0x100;
    for (std::uint64_t i = 0; i < 10000; ++i) {
      std::uint64_t t = 0x900000 + i * 0x300;
      put_task(ram, t, static_cast<int>(1000 + i), "t", init);
      link(ram, prev, t + 0x100);
      prev = t + 0x100;
    }
    link(ram, prev, init + 0x100);
    TaskList list = read_tasks(*kernel, 100);
    CHECK_FALSE(list.walk.complete);
    CHECK(list.tasks.size() == 101);
    CHECK(read_tasks(*kernel).tasks.size() == 10001);
  }
}

TEST_CASE("modules are read with their names and text ranges", "[introspection]") {
  VectorMemory ram(1 << 22);
  auto kernel = synthetic_kernel(ram);
  const std::uint64_t head = 0x100000, mod = 0x30000;
  ram.put<std::uint32_t>(mod, 0);
  ram.put_bytes(mod + 0x18, std::string("immortal_fault") + '\0');
  ram.put<std::uint64_t>(mod + 0x100, 0xffffffffc0600000ull);
  ram.put<std::uint32_t>(mod + 0x108, 16384);
  ram.put<std::uint32_t>(mod + 0x10c, 4096);
  link(ram, head, mod + 0x8);
  link(ram, mod + 0x8, head);
  ModuleList list = read_modules(*kernel);
  REQUIRE(list.modules.size() == 1);
  CHECK(list.modules[0].name == "immortal_fault");
  CHECK(list.modules[0].state == "live");
  CHECK(list.modules[0].base == 0xffffffffc0600000ull);
  CHECK(list.modules[0].size == 16384);
}

TEST_CASE("a module profiled while loading loses its freed init code's symbols to the module reusing that memory", "[introspection]") {
  VectorMemory ram(1 << 22);
  map_kernel_image(ram);
  auto types = linux_like_types();
  types->add("module", "kallsyms", 0x200);
  types->add("mod_kallsyms", "symtab", 0x0);
  types->add("mod_kallsyms", "num_symtab", 0x8, 4);
  types->add("mod_kallsyms", "strtab", 0x10);
  types->add("mod_kallsyms", "typetab", 0x18);
  // The profile saw drm while its init code ran (drm_core_init, in memory freed since) and no
  // immortal_fault, loaded later where drm's init code was.
  std::string kallsyms = std::string(kKallsyms.substr(0, kKallsyms.find("ffffffffc0600000"))) +
                         "ffffffffc0500000 t drm_ioctl\t[drm]\n"
                         "ffffffffc0600010 t drm_core_init\t[drm]\n"
                         "ffffffffc0700000 t snd_init\t[snd]\n";
  KernelLayout layout;
  layout.page_table = 0x1000;
  auto kernel = Kernel::assemble(ram, layout, SymbolTable::from_kallsyms(kallsyms), std::move(types), "6.1.0-test",
                                 "drm 16384 0 - Live 0xffffffffc0500000\n");
  REQUIRE(kernel->symbols().describe(0xffffffffc0600015ull).starts_with("drm_core_init"));
  // Each module's own symbol table in memory holds its core symbols only.
  auto put_module = [&](std::uint64_t mod, const std::string& name, std::uint64_t base,
                        std::vector<std::pair<std::string, std::uint64_t>> symbols) {
    ram.put_bytes(mod + 0x18, name + '\0');
    ram.put<std::uint64_t>(mod + 0x100, base);
    ram.put<std::uint32_t>(mod + 0x108, 16384);
    ram.put<std::uint32_t>(mod + 0x10c, 4096);
    std::uint64_t table = mod + 0x800, symtab = mod + 0x900, strtab = mod + 0xa00, typetab = mod + 0xb00;
    ram.put<std::uint64_t>(mod + 0x200, kva(table));
    ram.put<std::uint64_t>(table, kva(symtab));
    ram.put<std::uint32_t>(table + 0x8, static_cast<std::uint32_t>(symbols.size()));
    ram.put<std::uint64_t>(table + 0x10, kva(strtab));
    ram.put<std::uint64_t>(table + 0x18, kva(typetab));
    std::uint32_t name_at = 1;
    for (std::size_t i = 0; i < symbols.size(); ++i) {
      ram.put<std::uint32_t>(symtab + 24 * i, name_at);
      ram.put<std::uint64_t>(symtab + 24 * i + 8, symbols[i].second);
      ram.put_bytes(strtab + name_at, symbols[i].first + '\0');
      ram.put<char>(typetab + i, 't');
      name_at += static_cast<std::uint32_t>(symbols[i].first.size() + 1);
    }
  };
  const std::uint64_t head = 0x100000, drm = 0x30000, fault = 0x31000;
  put_module(drm, "drm", 0xffffffffc0500000ull, {{"drm_ioctl", 0xffffffffc0500000ull}});
  put_module(fault, "immortal_fault", 0xffffffffc0600000ull,
             {{"fault_fn", 0xffffffffc0600000ull}, {"other_fn", 0xffffffffc0600040ull}});
  link(ram, head, drm + 0x8);
  link(ram, drm + 0x8, fault + 0x8);
  link(ram, fault + 0x8, head);
  kernel->refresh_module_symbols();
  CHECK(kernel->symbols().describe(0xffffffffc0600015ull) == "fault_fn+0x15/0x40 [immortal_fault]");
  CHECK(kernel->symbols().describe(0xffffffffc0500004ull).starts_with("drm_ioctl+0x4"));
  CHECK_FALSE(kernel->symbols().address_of("drm_core_init"));
}

TEST_CASE("modules of Linux 6.4 on (module.mem[], one allocation per kind) read into the same shape", "[introspection]") {
  VectorMemory ram(1 << 22);
  map_kernel_image(ram);
  auto types = linux_like_types();
  for (const char* f : {"core_layout.base", "core_layout.size", "core_layout.text_size"}) types->remove("module", f);
  // struct module_memory { void *base; unsigned int size; … } mem[7] at 0x100, 0x40 bytes each;
  // MOD_RODATA placed before MOD_DATA by the enum, as BTF would say.
  types->add("module", "mem", 0x100, 7 * 0x40);
  types->add_size("module_memory", 0x40);
  types->add("module_memory", "base", 0x0);
  types->add("module_memory", "size", 0x8, 4);
  for (auto [name, value] : {std::pair{"MOD_TEXT", 0}, {"MOD_DATA", 2}, {"MOD_RODATA", 1}, {"MOD_RO_AFTER_INIT", 3},
                             {"MOD_INIT_TEXT", 4}})
    types->add_enumerator(name, value);
  KernelLayout layout;
  layout.page_table = 0x1000;
  auto kernel = Kernel::assemble(ram, layout, SymbolTable::from_kallsyms(std::string(kKallsyms)), std::move(types), "6.12.0-test");
  const std::uint64_t head = 0x100000, mod = 0x30000;
  ram.put_bytes(mod + 0x18, std::string("lkdtm") + '\0');
  auto mem = [&](int kind, std::uint64_t base, std::uint32_t size) {
    ram.put<std::uint64_t>(mod + 0x100 + 0x40 * kind, base);
    ram.put<std::uint32_t>(mod + 0x108 + 0x40 * kind, size);
  };
  mem(0, 0xffffffffc0600000ull, 0x3000);  // text
  mem(1, 0xffffffffc0700000ull, 0x1000);  // rodata (index 1 by the enum)
  mem(2, 0xffffffffc0800000ull, 0x2000);  // data
  mem(4, 0xffffffffc0900000ull, 0x800);   // init text
  link(ram, head, mod + 0x8);
  link(ram, mod + 0x8, head);
  ModuleList list = read_modules(*kernel);
  REQUIRE(list.modules.size() == 1);
  const ModuleInfo& m = list.modules[0];
  CHECK(m.base == 0xffffffffc0600000ull);
  CHECK(m.text_size == 0x3000);
  CHECK(m.rodata.begin == 0xffffffffc0700000ull);
  CHECK(m.data.begin == 0xffffffffc0800000ull);
  CHECK(m.data.size() == 0x2000);
  CHECK(m.ro_after_init.empty());
  CHECK(m.size == 0x6000);
  CHECK(m.contains_text(0xffffffffc0600010ull));
  CHECK(m.contains_text(0xffffffffc0900010ull));  // init text
  CHECK_FALSE(m.contains_text(0xffffffffc0800010ull));
  CHECK(m.non_text().size() == 2);
  auto support = check_kernel_support(*kernel);
  CHECK_THAT(support.summary(), Catch::Contains("modules (mem[])"));
}

TEST_CASE("a 6.1 module's one block splits into text, read-only data and data; disorder is flagged", "[introspection]") {
  VectorMemory ram(1 << 22);
  map_kernel_image(ram);
  auto types = linux_like_types();
  types->add("module", "core_layout.ro_size", 0x110, 4);
  types->add("module", "core_layout.ro_after_init_size", 0x114, 4);
  KernelLayout layout;
  layout.page_table = 0x1000;
  auto kernel = Kernel::assemble(ram, layout, SymbolTable::from_kallsyms(std::string(kKallsyms)), std::move(types), "6.1.0-test");
  const std::uint64_t head = 0x100000, mod = 0x30000;
  ram.put_bytes(mod + 0x18, std::string("m") + '\0');
  ram.put<std::uint64_t>(mod + 0x100, 0xffffffffc0600000ull);
  ram.put<std::uint32_t>(mod + 0x108, 0x8000);  // size
  ram.put<std::uint32_t>(mod + 0x10c, 0x3000);  // text
  ram.put<std::uint32_t>(mod + 0x110, 0x4000);  // text + rodata
  ram.put<std::uint32_t>(mod + 0x114, 0x5000);  // … + ro_after_init
  link(ram, head, mod + 0x8);
  link(ram, mod + 0x8, head);
  ModuleInfo m = read_modules(*kernel).modules.at(0);
  CHECK(m.layout_sane);
  CHECK(m.rodata.begin == 0xffffffffc0603000ull);
  CHECK(m.rodata.end == 0xffffffffc0604000ull);
  CHECK(m.ro_after_init.end == 0xffffffffc0605000ull);
  CHECK(m.data.end == 0xffffffffc0608000ull);
  ram.put<std::uint32_t>(mod + 0x110, 0x9000);  // read-only data beyond the block: a hostile guest
  ModuleInfo bad = read_modules(*kernel).modules.at(0);
  CHECK_FALSE(bad.layout_sane);
  CHECK(bad.data.end <= bad.base + bad.size);
}

TEST_CASE("Linux 6.2's pcpu_hot gives current_task and __preempt_count under their own names", "[introspection]") {
  VectorMemory ram(1 << 22);
  map_kernel_image(ram);
  auto types = linux_like_types();
  types->add("pcpu_hot", "current_task", 0x0);
  types->add("pcpu_hot", "preempt_count", 0x8, 4);
  types->add_size("pcpu_hot", 64);
  KernelLayout layout;
  layout.page_table = 0x1000;
  std::string kallsyms = std::string(kKallsyms);
  const std::string own = "000000000001fbc0 A current_task\n";
  kallsyms.replace(kallsyms.find(own), own.size(), "0000000000021a40 A pcpu_hot\n");
  auto kernel = Kernel::assemble(ram, layout, SymbolTable::from_kallsyms(kallsyms), std::move(types), "6.12.0-test");
  CHECK(kernel->symbols().percpu_offset("current_task") == 0x21a40u);
  CHECK(kernel->symbols().percpu_offset("__preempt_count") == 0x21a48u);
}

TEST_CASE("the printk ring gives records in order, skips unfinished and corrupt ones", "[introspection]") {
  VectorMemory ram(1 << 24);
  auto kernel = synthetic_kernel(ram);
  // prb (symbol at phys 0xa00000) points to the ring at 0x200000; 8 descriptors, 256-byte data.
  const std::uint64_t rb = 0x200000, descs = 0x201000, infos = 0x202000, data = 0x203000;
  ram.put<std::uint64_t>(0xa00000, kva(rb));
  ram.put<std::uint32_t>(rb + 0x0, 3);
  ram.put<std::uint64_t>(rb + 0x8, kva(descs));
  ram.put<std::uint64_t>(rb + 0x10, kva(infos));
  ram.put<std::uint32_t>(rb + 0x30, 8);
  ram.put<std::uint64_t>(rb + 0x38, kva(data));
  auto put_record = [&](std::uint64_t id, std::uint64_t state, std::uint64_t begin, std::uint64_t next,
                        const std::string& text, std::uint64_t seq) {
    std::uint64_t i = id & 7;
    ram.put<std::uint64_t>(descs + i * 24, state << 62 | id);
    ram.put<std::uint64_t>(descs + i * 24 + 8, begin);
    ram.put<std::uint64_t>(descs + i * 24 + 16, next);
    ram.put<std::uint64_t>(infos + i * 88, seq);
    ram.put<std::uint64_t>(infos + i * 88 + 8, seq * 1'000'000'000 + 5000);
    ram.put<std::uint16_t>(infos + i * 88 + 0x10, static_cast<std::uint16_t>(text.size()));
    ram.put<std::uint8_t>(infos + i * 88 + 0x13, static_cast<std::uint8_t>(6 << 5));
    if (!(begin & 1)) {
      std::uint64_t at = (begin >> 8) == (next >> 8) ? (begin & 255) : 0;
      ram.put<std::uint64_t>(data + at, id);
      ram.put_bytes(data + at + 8, text);
    }
  };
  put_record(10, 2, 0x130, 0x150, "first line", 1);
  put_record(11, 0, 0x150, 0x170, "still being written", 2);  // reserved: skipped
  put_record(12, 2, 0x170, 0x190, "third", 3);
  put_record(13, 1, 0x1f0, 0x220, "wraps to the start", 4);   // next in the following wrap
  put_record(14, 2, 0x3, 0x3, "", 5);                          // dataless
  ram.put<std::uint64_t>(rb + 0x18, 14);
  ram.put<std::uint64_t>(rb + 0x20, 10);
  KernelLog log = read_kernel_log(*kernel);
  REQUIRE(log.records.size() == 4);
  CHECK(log.records[0].text == "first line");
  CHECK(log.records[0].level == 6);
  CHECK(log.records[1].text == "third");
  CHECK(log.records[2].text == "wraps to the start");
  CHECK(log.records[3].text.empty());
  CHECK(log.skipped == 1);

  SECTION("only the newest records, when asked for fewer") {
    KernelLog tail = read_kernel_log(*kernel, 3);  // ids 12, 13, 14
    REQUIRE(tail.records.size() == 3);
    CHECK(tail.records[0].text == "third");
    CHECK(tail.records[2].text.empty());
    CHECK(tail.truncated);
    CHECK(read_kernel_log(*kernel, 0).records.empty());
    CHECK_FALSE(read_kernel_log(*kernel, 5).truncated);  // the whole ring: nothing left out
  }
  SECTION("absurd ring sizes are refused") {
    ram.put<std::uint32_t>(rb + 0x30, 60);
    CHECK_THROWS_WITH(read_kernel_log(*kernel), Catch::Contains("implausible"));
  }
  SECTION("a text length beyond its block is cut to the block") {
    ram.put<std::uint16_t>(infos + (10 & 7) * 88 + 0x10, 60000);
    CHECK(read_kernel_log(*kernel).records[0].text.size() == 0x20 - 8);
  }
  SECTION("the panic line is appended after the newest record, formatted from panic()'s arguments") {
    ram.put<std::uint32_t>(rb + 0x30, 12);      // a 4 KiB data ring, so the new record has room
    ram.put<std::uint64_t>(rb + 0x40, 0x220);  // data head_lpos (after record 13)
    ram.put<std::uint64_t>(rb + 0x48, 0x130);  // data tail_lpos
    ram.put_bytes(0xa10000, std::string("driver %s failed: %d (%x)%%") + '\0');
    ram.put_bytes(0xa10100, std::string("mydrv") + '\0');
    X86Registers regs;
    regs.rdi = kva(0xa10000);
    regs.rsi = kva(0xa10100);
    regs.rdx = static_cast<std::uint64_t>(-5);
    regs.rcx = 0xbeef;
    std::string message = format_panic_message(*kernel, regs);
    CHECK(message == "driver mydrv failed: -5 (beef)%");
    // The pages the append writes, as a snapshot is told to keep them even when all zeros: every
    // page it writes is among them, but for the ring's heads (in prb itself, never all zeros).
    auto keep = log_append_pages(*kernel, kMaxPanicLine);
    struct Recorder final : PhysicalMemory {
      PhysicalMemory& inner;
      std::set<std::uint64_t> pages;
      explicit Recorder(PhysicalMemory& m) : inner(m) {}
      const std::vector<PhysicalRange>& ranges() const override { return inner.ranges(); }
      void read(std::uint64_t a, std::span<std::byte> out) const override { inner.read(a, out); }
      bool writable() const override { return true; }
      void write(std::uint64_t a, std::span<const std::byte> data) override {
        for (std::uint64_t p = a & ~0xfffull; p < a + data.size(); p += 0x1000) pages.insert(p);
        inner.write(a, data);
      }
    } recorder(ram);
    std::string why;
    bool appended = append_log_record(*kernel, recorder, "Kernel panic - not syncing: " + message, 42, &why);
    INFO(why);
    REQUIRE(appended);
    recorder.pages.erase(rb);
    for (std::uint64_t page : recorder.pages) {
      INFO(fmt::format("page {:#x}", page));
      CHECK(std::binary_search(keep.begin(), keep.end(), page));
    }
    CHECK(recorder.pages.size() >= 2);
    KernelLog after = read_kernel_log(*kernel);
    REQUIRE(after.records.size() == 5);
    CHECK(after.records.back().text == "Kernel panic - not syncing: driver mydrv failed: -5 (beef)%");
    CHECK(after.records.back().level == 0);
    CHECK(after.records.back().seq == 6);
    CHECK(panic_message(after) == "driver mydrv failed: -5 (beef)%");
    // The ring holds 8 descriptors from tail id 10: ids 15, 16, 17 fit; the 18th would overwrite.
    CHECK(append_log_record(*kernel, ram, "two", 0, &why));
    CHECK(append_log_record(*kernel, ram, "three", 0, &why));
    CHECK_FALSE(append_log_record(*kernel, ram, "four", 0, &why));
    CHECK(why.find("full") != std::string::npos);
  }
  SECTION("a record that would wrap the data ring is not appended") {
    ram.put<std::uint64_t>(rb + 0x40, 0x2f0);
    ram.put<std::uint64_t>(rb + 0x48, 0x130);
    std::string why;
    CHECK_FALSE(append_log_record(*kernel, ram, "a line longer than the sixteen bytes left", 0, &why));
    CHECK(why.find("wrap") != std::string::npos);
  }
  SECTION("a tail that never reaches the head is bounded by the ring size") {
    ram.put<std::uint64_t>(rb + 0x18, 999);
    CHECK(read_kernel_log(*kernel).records.size() <= 8);
  }
  SECTION("records that all claim one big block keep the newest text within the budget") {
    const std::uint64_t d2 = 0x300000, i2 = 0x320000, data2 = 0x400000;
    ram.put<std::uint32_t>(rb + 0x0, 12);  // 4096 descriptors
    ram.put<std::uint64_t>(rb + 0x8, kva(d2));
    ram.put<std::uint64_t>(rb + 0x10, kva(i2));
    ram.put<std::uint32_t>(rb + 0x30, 16);  // a 64 KiB data ring
    ram.put<std::uint64_t>(rb + 0x38, kva(data2));
    for (std::uint64_t id = 0; id < 4096; ++id) {
      ram.put<std::uint64_t>(d2 + id * 24, 2ull << 62 | id);
      ram.put<std::uint64_t>(d2 + id * 24 + 8, 0);        // every one the whole ring: 4096 x 64 KiB of text
      ram.put<std::uint64_t>(d2 + id * 24 + 16, 0xfff0);
      ram.put<std::uint64_t>(i2 + id * 88, id);
      ram.put<std::uint16_t>(i2 + id * 88 + 0x10, 0xffff);
    }
    ram.put<std::uint64_t>(rb + 0x18, 4095);
    ram.put<std::uint64_t>(rb + 0x20, 0);
    KernelLog big = read_kernel_log(*kernel);
    CHECK(big.truncated);
    std::uint64_t bytes = 0;
    for (const auto& r : big.records) bytes += r.text.size();
    CHECK(bytes <= immortal::budget::kLogTextBytes);
    REQUIRE(big.records.size() > 100);
    CHECK(big.records.back().seq == 4095);  // the newest are the ones kept
  }
}

TEST_CASE("symbols: kallsyms text, per-CPU offsets, modules and descriptions", "[introspection]") {
  SymbolTable t = SymbolTable::from_kallsyms(std::string(kKallsyms));
  CHECK(t.skipped_lines() == 1);
  CHECK(t.address_of("start_kernel") == 0xffffffff81000100u);
  CHECK(t.percpu_offset("current_task") == 0x1fbc0u);
  CHECK_FALSE(t.address_of("current_task").has_value());
  CHECK(t.describe(0xffffffff81000105) == "start_kernel+0x5/0x100");
  CHECK(t.describe(0xffffffffc0600010) == "fault_fn+0x10/0x40 [immortal_fault]");
  CHECK(t.describe(0x1234) == "0x1234");
  CHECK(t.is_text(0xffffffff81000210));
  CHECK_FALSE(t.is_text(0xffffffff80800010));
}

TEST_CASE("symbols keep their names through copies, moves and modules reloaded many times", "[introspection]") {
  std::string text =
      "ffffffff81000000 T _stext\n"
      "ffffffff81000100 t helper\n"
      "ffffffff81000200 T start_kernel\n"
      "ffffffffc0600000 t helper\t[mod_a]\n"
      "ffffffffc0600040 T a_entry\t[mod_a]\n"
      "ffffffffc0700000 T b_entry\t[mod_b]\n";
  SymbolTable t = SymbolTable::from_kallsyms(text);
  text.assign(text.size(), 'x');  // the table holds its own names, not views of the text
  CHECK(t.address_of("helper") == 0xffffffff81000100u);  // the first definition wins
  CHECK(t.address_in("helper", "mod_a") == 0xffffffffc0600000u);
  CHECK(t.describe(0xffffffffc0600044) == "a_entry+0x4/0xfffc0 [mod_a]");
  CHECK(base_function_name("__mutex_lock.constprop.0") == "__mutex_lock");
  CHECK(base_function_name("plain") == "plain");

  SymbolTable copy = t;
  auto in_t = t.lookup(0xffffffff81000205);
  REQUIRE(in_t);
  SymbolTable moved = std::move(t);
  CHECK(in_t->name() == "start_kernel");  // a move keeps symbols and names where they were
  REQUIRE(moved.lookup(0xffffffff81000205));
  CHECK(moved.lookup(0xffffffff81000205)->name().data() == in_t->name().data());
  // A moved-from table given symbols of its own writes none into the storage it handed over.
  t.update_modules({{"mod_z", {FoundSymbol{0xffffffffc0900000u, 't', std::string(300, 'z'), "mod_z"}}}}, {"mod_z"});
  CHECK(t.address_of(std::string(300, 'z')) == 0xffffffffc0900000u);
  CHECK(in_t->name() == "start_kernel");
  CHECK(moved.address_of("a_entry") == 0xffffffffc0600040u);
  t = SymbolTable::from_kallsyms("ffffffff81000000 T other\n");  // the moved-from table is reused
  CHECK(copy.lookup(0xffffffff81000205)->name() == "start_kernel");
  CHECK(copy.address_of("a_entry") == 0xffffffffc0600040u);
  CHECK(t.address_of("a_entry") == std::nullopt);

  // A guest that reloads a module again and again: each time it is found at a new base with its
  // symbols read from memory; what the table holds stays the live symbols' worth.
  for (int round = 0; round < 3000; ++round) {
    std::vector<FoundSymbol> fresh;
    for (int i = 0; i < 8; ++i)
      fresh.push_back({0xffffffffc0800000u + 0x1000u * static_cast<unsigned>(round % 7) + 0x40u * static_cast<unsigned>(i), 't',
                       fmt::format("reloaded_fn_{}_with_a_long_name_{}", i, round), "mod_c"});
    copy.update_modules({{"mod_c", fresh}}, {"mod_a", "mod_c"});
  }
  CHECK(copy.size() == 3 + 2 + 8);  // the image, mod_a, mod_c's last load; mod_b is gone
  CHECK_FALSE(copy.address_of("b_entry").has_value());
  CHECK(copy.address_of("reloaded_fn_3_with_a_long_name_2999") == 0xffffffffc0800000u + 0x1000u * (2999 % 7) + 0xc0u);
  CHECK_FALSE(copy.address_of("reloaded_fn_3_with_a_long_name_2998").has_value());
  CHECK(copy.describe(0xffffffffc0600044).starts_with("a_entry+0x4/"));
  CHECK(copy.describe(0xffffffffc0600044).ends_with(" [mod_a]"));
  CHECK(copy.name_bytes() < (2u << 20));
  // Type letters and modules survive the names being moved to fresh storage.
  auto reloaded = copy.lookup(0xffffffffc0800000u + 0x1000u * (2999 % 7) + 0xc0u);
  REQUIRE(reloaded);
  CHECK(reloaded->type() == 't');
  CHECK(reloaded->module() == "mod_c");
  CHECK(copy.lookup(0xffffffff81000205)->type() == 'T');
  CHECK(copy.lookup(0xffffffff81000205)->module().empty());
  CHECK(copy.lookup(0xffffffffc0600044)->module() == "mod_a");
  static_assert(sizeof(StoredSymbol) == 24, "a kernel's ≈ 95 k symbols are held by every process that has its profile");
  // A name longer than its two length bytes hold (a guest's own module table may say anything) is cut.
  copy.update_modules({{"mod_long",
                        {FoundSymbol{0xffffffffc0a00000u, 'T', std::string(70000, 'n'), "mod_long"},
                         FoundSymbol{0xffffffffc0a00100u, 't', "after_it", "mod_long"}}}},
                      {"mod_a", "mod_c", "mod_long"});
  auto cut = copy.lookup(0xffffffffc0a00000u);
  REQUIRE(cut);
  CHECK(cut->name() == std::string(65535, 'n'));
  CHECK(cut->type() == 'T');
  CHECK(cut->module() == "mod_long");
  // A module name cut the same way is still kept once for all its symbols.
  std::string long_module(70000, 'm');
  std::size_t before = copy.name_bytes();
  copy.update_modules({{long_module,
                        {FoundSymbol{0xffffffffc0b00000u, 't', "m1", long_module},
                         FoundSymbol{0xffffffffc0b00100u, 't', "m2", long_module},
                         FoundSymbol{0xffffffffc0b00200u, 't', "m3", long_module}}}},
                      {"mod_a", "mod_c", "mod_long", long_module});
  CHECK(copy.lookup(0xffffffffc0b00100u)->module() == std::string(65535, 'm'));
  CHECK(copy.name_bytes() - before < 2 * 65535);
}

TEST_CASE("VMCOREINFO is parsed leniently and checked on use", "[introspection]") {
  auto vi = Vmcoreinfo::parse("OSRELEASE=6.1.0-56-amd64\nPAGESIZE=4096\nSYMBOL(init_top_pgt)=ffffffff9d80a000\n"
                              "NUMBER(phys_base)=-2147483648\nKERNELOFFSET=1c000000\nOFFSET(list_head.next)=0\njunk\n");
  CHECK(vi.release() == "6.1.0-56-amd64");
  CHECK(vi.symbol("init_top_pgt") == 0xffffffff9d80a000u);
  CHECK(vi.kernel_offset() == 0x1c000000u);
  CHECK(vi.number("phys_base") == static_cast<std::uint64_t>(-2147483648ll));
  CHECK(vi.offset("list_head.next") == 0u);
  CHECK_FALSE(vi.symbol("missing").has_value());
  CHECK_THROWS_AS(Vmcoreinfo::parse("hello world"), Error);
}

namespace {
// A minimal ELF64 core: header, a PT_NOTE (NT_PRSTATUS + VMCOREINFO) and PT_LOAD segments.
std::string make_core(const std::vector<std::pair<std::uint64_t, std::string>>& loads, std::uint16_t machine = EM_X86_64) {
  auto note = [](const std::string& name, std::uint32_t type, const std::string& desc) {
    std::string n;
    std::uint32_t hdr[3] = {static_cast<std::uint32_t>(name.size() + 1), static_cast<std::uint32_t>(desc.size()), type};
    n.append(reinterpret_cast<const char*>(hdr), 12);
    n += name + '\0';
    n.resize((n.size() + 3) & ~3ull, '\0');
    n += desc;
    n.resize((n.size() + 3) & ~3ull, '\0');
    return n;
  };
  std::string prstatus(336, '\0');
  std::int32_t pid = 77;
  std::memcpy(prstatus.data() + 32, &pid, 4);
  std::uint64_t rip = 0xffffffff81000105ull;
  std::memcpy(prstatus.data() + 112 + 16 * 8, &rip, 8);
  std::string notes = note("CORE", 1, prstatus) + note("VMCOREINFO", 0, "OSRELEASE=6.1.0-test\nPAGESIZE=4096\n");
  std::size_t phnum = 1 + loads.size();
  std::uint64_t offset = sizeof(Elf64_Ehdr) + phnum * sizeof(Elf64_Phdr);
  Elf64_Ehdr eh{};
  std::memcpy(eh.e_ident, ELFMAG, SELFMAG);
  eh.e_ident[EI_CLASS] = ELFCLASS64;
  eh.e_ident[EI_DATA] = ELFDATA2LSB;
  eh.e_ident[EI_VERSION] = EV_CURRENT;
  eh.e_type = ET_CORE;
  eh.e_machine = machine;
  eh.e_version = EV_CURRENT;
  eh.e_phoff = sizeof(Elf64_Ehdr);
  eh.e_ehsize = sizeof(Elf64_Ehdr);
  eh.e_phentsize = sizeof(Elf64_Phdr);
  eh.e_phnum = static_cast<Elf64_Half>(phnum);
  std::string out(reinterpret_cast<const char*>(&eh), sizeof eh);
  std::string body = notes;
  std::vector<Elf64_Phdr> ph;
  Elf64_Phdr n{};
  n.p_type = PT_NOTE;
  n.p_offset = offset;
  n.p_filesz = notes.size();
  ph.push_back(n);
  for (const auto& [paddr, bytes] : loads) {
    Elf64_Phdr l{};
    l.p_type = PT_LOAD;
    l.p_paddr = paddr;
    l.p_offset = offset + body.size();
    l.p_filesz = l.p_memsz = bytes.size();
    body += bytes;
    ph.push_back(l);
  }
  for (const auto& p : ph) out.append(reinterpret_cast<const char*>(&p), sizeof p);
  return out + body;
}

std::string write_temp(const std::string& bytes) {
  char path[] = "/tmp/immortal-unit-XXXXXX";
  int fd = ::mkstemp(path);
  REQUIRE(fd >= 0);
  REQUIRE(::write(fd, bytes.data(), bytes.size()) == static_cast<ssize_t>(bytes.size()));
  ::close(fd);
  return path;
}
}  // namespace

TEST_CASE("page types decode in both encodings: ~flag up to 6.11, the top byte from 6.12", "[introspection]") {
  // 6.1: buddy = ~0x80. A free block's head has the bit clear under the all-ones top nibble.
  auto old_buddy = PageType::from_exported(-129);
  REQUIRE(old_buddy);
  CHECK(old_buddy->matches(0xffffff7f));
  CHECK_FALSE(old_buddy->matches(0xffffffff));  // _mapcount -1: no type
  CHECK_FALSE(old_buddy->matches(0));           // mapped once
  CHECK_FALSE(old_buddy->matches(0xfffffeff));  // offline, not buddy
  // 6.10: slab = ~0x00200000 (PG_slab left page->flags); buddy and slab bits in one word.
  auto old_slab = PageType::from_exported(~std::int64_t{0x00200000});
  REQUIRE(old_slab);
  CHECK(old_slab->matches(0xffdfffff));
  CHECK_FALSE(old_slab->matches(0xfbffffff));
  // 6.12 (values from a Debian 13 guest's VMCOREINFO): PGTY_buddy 0xf0, PGTY_slab 0xf5.
  auto buddy = PageType::from_exported(-268435456);
  auto slab = PageType::from_exported(-184549376);
  REQUIRE(buddy);
  REQUIRE(slab);
  CHECK(buddy->matches(0xf0000000));
  CHECK(slab->matches(0xf5000000));
  CHECK(slab->matches(0xf5000123));  // the low 24 bits are the type's own data
  CHECK_FALSE(buddy->matches(0xf5000000));
  CHECK_FALSE(buddy->matches(0xffffffff));
  CHECK_FALSE(buddy->matches(0x00000003));
  // Values neither encoding makes are refused, not guessed at.
  for (std::int64_t bad : {std::int64_t{0}, std::int64_t{-1}, std::int64_t{0x12345678}, ~std::int64_t{0x10000000},
                           std::int64_t{-16777216} /* 0xff << 24 */, std::int64_t{1} << 40})
    CHECK_FALSE(PageType::from_exported(bad));
  auto vi = Vmcoreinfo::parse("OSRELEASE=6.12.0\nNUMBER(PAGE_BUDDY_MAPCOUNT_VALUE)=-268435456\n"
                              "NUMBER(PAGE_SLAB_MAPCOUNT_VALUE)=lots\n");
  CHECK(PageType::of_kernel(vi, "BUDDY"));
  CHECK_FALSE(PageType::of_kernel(vi, "SLAB"));
  CHECK_FALSE(PageType::of_kernel(vi, "OFFLINE"));
}

TEST_CASE("ELF cores: memory by physical address, CPU notes, VMCOREINFO, and damaged files", "[introspection]") {
  std::string page(4096, 'a'), other(8192, 'b');
  std::string bytes = make_core({{0x1000, page}, {0x100000, other}});
  std::string path = write_temp(bytes);
  auto core = ElfCoreMemory::open(path);
  REQUIRE(core->ranges().size() == 2);
  CHECK(core->read_value<std::uint8_t>(0x1000) == 'a');
  CHECK(core->read_value<std::uint8_t>(0x101fff) == 'b');
  CHECK_THROWS_AS(core->read_value<std::uint8_t>(0x2000), MemoryFault);
  REQUIRE(core->cpus().size() == 1);
  CHECK(core->cpus()[0].pid == 77);
  CHECK(core->cpus()[0].registers.rip == 0xffffffff81000105ull);
  CHECK(core->vmcoreinfo()->find("OSRELEASE=6.1.0-test") == 0);
  CHECK_THROWS_AS(core->write(0x1000, std::as_bytes(std::span("x", 1))), MemoryFault);
  std::remove(path.c_str());

  SECTION("kdump's layout maps the kernel text twice: overlapping segments are one range") {
    std::string ram(16384, 'r');
    std::string text_copy(4096, 'r');
    std::string p2 = write_temp(make_core({{0x100000, ram}, {0x101000, text_copy}}));
    auto c = ElfCoreMemory::open(p2);
    REQUIRE(c->ranges().size() == 1);
    CHECK(c->ranges()[0].size == 16384);
    CHECK(c->read_value<std::uint8_t>(0x101800) == 'r');
    CHECK(c->read_value<std::uint8_t>(0x103fff) == 'r');
    std::remove(p2.c_str());
  }
  SECTION("a truncated core keeps what it has and reports the rest missing") {
    std::string cut = write_temp(bytes.substr(0, bytes.size() - 4096));
    auto c = ElfCoreMemory::open(cut);
    CHECK(c->read_value<std::uint8_t>(0x100000) == 'b');
    CHECK_THROWS_WITH(c->read_value<std::uint8_t>(0x101800), Catch::Contains("not in the dump"));
    REQUIRE(c->missing().size() == 1);
    CHECK(c->missing()[0].size == 4096);
    std::remove(cut.c_str());
  }
  SECTION("not ELF, another architecture, not a core, too short") {
    for (const auto& [what, data] : std::vector<std::pair<std::string, std::string>>{
             {"not an ELF", std::string(200, 'x')},
             {"another architecture", make_core({{0, page}}, EM_AARCH64)},
             {"too short", "\x7f" "ELF"}}) {
      INFO(what);
      std::string p = write_temp(data);
      try {
        ElfCoreMemory::open(p);
        FAIL("accepted");
      } catch (const Error& e) {
        CHECK(e.code() == ExitCode::bad_input);
        CHECK_THAT(e.what(), Catch::Contains(what));
      }
      std::remove(p.c_str());
    }
  }
}

TEST_CASE("a packed profile gives back every file as it was, and keeps much less", "[introspection]") {
  GuestProfile p;
  p.kernel_release = "6.1.0-test";
  p.boot_id = "b";
  p.taken_at = "2026-12-05T18:00:00Z";
  p.vmcoreinfo_paddr = 0x1234000;
  p.vmcoreinfo_size = 0x1000;
  // Text like a kernel's: many symbols, similar lines (what the supervisor keeps).
  for (int i = 0; i < 20000; ++i) p.kallsyms += fmt::format("ffffffff81{:06x} T function_number_{}\n", i * 16, i);
  p.modules = "immortal_fault 16384 0 - Live 0xffffffffc0000000\n";
  p.btf_vmlinux = std::string(300000, '\x9f');
  p.btf_modules["immortal_fault"] = "btf of the module";
  p.btf_modules["empty"] = "";
  PackedProfile packed(p);
  CHECK(packed.head().kernel_release == "6.1.0-test");
  CHECK(packed.head().taken_at == p.taken_at);
  CHECK(packed.head().vmcoreinfo_paddr == 0x1234000);
  CHECK(packed.head().kallsyms.empty());
  CHECK(packed.symbols() == 20000);
  CHECK(packed.file_bytes() == p.kallsyms.size() + p.modules.size() + p.btf_vmlinux.size() + 17);
  CHECK(packed.packed_bytes() * 4 < packed.file_bytes());
  GuestProfile back = packed.unpack();
  CHECK(back.kallsyms == p.kallsyms);
  CHECK(back.modules == p.modules);
  CHECK(back.btf_vmlinux == p.btf_vmlinux);
  CHECK(back.btf_modules == p.btf_modules);
  CHECK(back.boot_id == "b");
  CHECK(back.vmcoreinfo_size == 0x1000);

  // Stored packed (the instance directory's copy), it reads back whole wherever a profile
  // directory is read, and the payload's writer gets the frames as they are.
  namespace fs = std::filesystem;
  fs::path dir = fs::temp_directory_path() / ("immortal-packed-profile-" + std::to_string(::getpid()));
  packed.store(dir.string());
  CHECK(fs::exists(dir / "kallsyms.zst"));
  CHECK_FALSE(fs::exists(dir / "kallsyms"));
  CHECK(fs::exists(dir / "btf" / "immortal_fault.zst"));
  auto stored = GuestProfile::read_stored_files(dir.string());
  CHECK(stored.count("kallsyms.zst"));
  CHECK(stored.count("profile.json"));
  GuestProfile loaded = GuestProfile::load(dir.string());
  CHECK(loaded.kallsyms == p.kallsyms);
  CHECK(loaded.btf_vmlinux == p.btf_vmlinux);
  CHECK(loaded.btf_modules == p.btf_modules);
  CHECK(loaded.taken_at == p.taken_at);
  // A damaged frame is refused as bad input, like any other damaged profile.
  std::ofstream(dir / "kallsyms.zst", std::ios::trunc) << "garbage";
  CHECK_THROWS_WITH(GuestProfile::load(dir.string()), Catch::Contains("not a zstd frame"));
  fs::remove_all(dir);
}

TEST_CASE("a profile's files may come packed (NAME.zst, as in the repair payload), and a bad frame is refused", "[introspection]") {
  std::string kallsyms = std::string(kKallsyms),
              manifest = R"({"format": 1, "kernel_release": "6.1.0-test", "vmcoreinfo": {"paddr": 4096, "size": 64}})";
  std::string packed = zstd_pack(kallsyms, 1);
  std::map<std::string, std::string_view> entries = {
      {"profile.json", manifest}, {"kallsyms.zst", packed}, {"modules", ""}, {"btf/vmlinux", "x"}};
  auto files = GuestProfile::files_from(entries, "payload");
  CHECK(files.at("kallsyms") == kallsyms);
  CHECK_FALSE(files.count("kallsyms.zst"));
  CHECK(GuestProfile::parse(std::move(files), "payload").kallsyms == kallsyms);
  auto refused = [&](std::string_view frame, const char* what) {
    entries["kallsyms.zst"] = frame;
    try {
      GuestProfile::files_from(entries, "payload");
      FAIL("accepted " << what);
    } catch (const Error& e) {
      CHECK(e.code() == ExitCode::bad_input);
      CHECK_THAT(e.what(), Catch::Contains(what));
    }
  };
  refused("not zstd at all", "not a zstd frame");
  refused(std::string_view(packed).substr(0, packed.size() / 2), "does not unpack");
  std::string huge = zstd_pack(std::string(GuestProfile::kMaxFileSize + 1, 'a'), 1);
  refused(huge, "more than");
  entries["kallsyms.zst"] = packed;
  entries["kallsyms"] = kallsyms;
  CHECK_THROWS_WITH(GuestProfile::files_from(entries, "payload"), Catch::Contains("there twice"));
}

TEST_CASE("a profile survives saving and loading, and a damaged one is refused", "[introspection]") {
  namespace fs = std::filesystem;
  fs::path dir = fs::temp_directory_path() / ("immortal-profile-" + std::to_string(::getpid()));
  GuestProfile p;
  p.kernel_release = "6.1.0-test";
  p.boot_id = "b";
  p.vmcoreinfo_paddr = 0x1234000;
  p.vmcoreinfo_size = 0x1000;
  p.kallsyms = std::string(kKallsyms);
  p.modules = "immortal_fault 16384 0 - Live 0x0\n";
  p.btf_vmlinux = "not really btf";
  p.btf_modules["immortal_fault"] = "btf";
  p.btf_modules["../evil"] = "skipped";
  p.save(dir.string());
  p.kallsyms += "ffffffff81000300 T added\n";
  p.save(dir.string());  // replaces the first as a whole
  GuestProfile back = GuestProfile::load(dir.string());
  CHECK(back.kallsyms == p.kallsyms);
  CHECK(back.vmcoreinfo_paddr == 0x1234000);
  CHECK(back.btf_modules.size() == 1);
  std::ofstream(dir / "profile.json") << R"({"format": 99})";
  CHECK_THROWS_WITH(GuestProfile::load(dir.string()), Catch::Contains("unsupported profile format"));
  std::ofstream(dir / "profile.json") << R"({"format": "1"})";  // found by libFuzzer: a string, not a number
  CHECK_THROWS_WITH(GuestProfile::load(dir.string()), Catch::Contains("unsupported profile format"));
  std::ofstream(dir / "profile.json") << "{not json";
  CHECK_THROWS_WITH(GuestProfile::load(dir.string()), Catch::Contains("not a JSON object"));
  fs::remove_all(dir);
  CHECK_THROWS_WITH(GuestProfile::load(dir.string()), Catch::Contains("missing"));
  std::uint64_t a = 0, s = 0;
  CHECK(parse_vmcoreinfo_location("1a3f000 1024\n", &a, &s));
  CHECK(a == 0x1a3f000);
  CHECK_FALSE(parse_vmcoreinfo_location("zz 10", &a, &s));
  CHECK_FALSE(parse_vmcoreinfo_location("10 ffffffffff", &a, &s));
}

TEST_CASE("the ORC unwinder follows call frames to the end of the stack, and stops on loops", "[introspection]") {
  VectorMemory ram(1 << 23);
  // Text: f_a, f_b, f_c, then an end marker; ORC tables at 0x300000 (ips) and 0x310000 (entries).
  std::string syms =
      "ffffffff80300000 R __start_orc_unwind_ip\n"
      "ffffffff80300010 R __stop_orc_unwind_ip\n"
      "ffffffff80310000 R __start_orc_unwind\n"
      "ffffffff80400000 t f_a\n"
      "ffffffff80400100 t f_b\n"
      "ffffffff80400200 t f_c\n"
      "ffffffff80400300 t f_end\n";
  auto kernel = synthetic_kernel(ram, syms);
  // 6.1 layout: type:2 at bit 8, end:1 at bit 10.
  auto entry = [&](int i, std::uint64_t ip_phys, std::int16_t sp_offset, int sp_reg, int type, bool end) {
    put_orc_entry(ram, i, ip_phys, sp_offset, static_cast<std::uint16_t>(sp_reg | type << 8 | (end ? 1 << 10 : 0)));
  };
  entry(0, 0x400000, 16, 5, 0, false);  // f_a: CFA = sp + 16 (one saved word, then the return address)
  entry(1, 0x400100, 8, 5, 0, false);   // f_b: CFA = sp + 8
  entry(2, 0x400200, 0, 0, 0, true);    // f_c: the end of the stack
  entry(3, 0x400300, 0, 0, 0, false);
  const std::uint64_t stack = 0x500000;
  ram.put<std::uint64_t>(stack + 8, kva(0x400120));   // f_a returns into f_b+0x20
  ram.put<std::uint64_t>(stack + 16, kva(0x400205));  // f_b returns into f_c+0x5
  X86Registers regs;
  regs.rip = kva(0x400010);
  regs.rsp = kva(stack);
  OrcUnwinder unwinder(*kernel);
  Backtrace bt = unwinder.unwind(regs);
  INFO(bt.problem);
  REQUIRE(bt.frames.size() == 3);
  CHECK(bt.frames[0].symbol == "f_a+0x10/0x100");
  CHECK(bt.frames[1].symbol == "f_b+0x20/0x100");
  CHECK(bt.frames[2].symbol == "f_c+0x5/0x100");
  CHECK(bt.problem.empty());

  SECTION("a return address that leads back to the same frame is a loop, not a hang") {
    entry(1, 0x400100, 0, 5, 0, false);  // f_b: CFA = sp, so its "return address" is read below sp forever
    ram.put<std::uint64_t>(stack + 8, kva(0x400120));
    ram.put<std::uint64_t>(stack + 16 - 8, kva(0x400120));
    // The image's table is read once per Kernel (it does not change after boot): the changed
    // table needs a Kernel of its own. The first keeps what it read.
    CHECK(OrcUnwinder(*kernel).unwind(regs).frames.size() == 3);
    auto changed = synthetic_kernel(ram, syms);
    Backtrace looped = OrcUnwinder(*changed).unwind(regs);
    CHECK_THAT(looped.problem, Catch::Contains("loops"));
    CHECK(looped.frames.size() < 64);
  }
  SECTION("a stack pointer into the void stops with a reason") {
    regs.rsp = 0xffffc90000000000ull;
    Backtrace lost = OrcUnwinder(*kernel).unwind(regs);
    CHECK_THAT(lost.problem, Catch::Contains("unreadable"));
  }
  SECTION("code without ORC data stops with a reason") {
    regs.rip = kva(0x200000);
    CHECK_THAT(OrcUnwinder(*kernel).unwind(regs).problem, Catch::Contains("no ORC data"));
  }
  SECTION("the image's table read from a copy of its bytes (the host's file) unwinds the same") {
    auto own = kernel->orc_image();
    REQUIRE(own);
    CHECK(own->size() == 4);
    auto copy = std::make_shared<std::vector<std::uint8_t>>(own->bytes.begin(), own->bytes.end());
    copy->resize(copy->size() + 100, 0xee);  // a window may be longer
    auto shared = own->viewing(*copy, copy);
    REQUIRE(shared);
    CHECK(shared->bytes.data() == copy->data());
    kernel->keep_orc_image(shared);
    std::vector<std::uint8_t> other(own->bytes.begin(), own->bytes.end());
    other[4 * 4 + 6 * 1] ^= 1;  // the second entry's sp_offset
    CHECK_FALSE(own->viewing(other, copy));
    CHECK_FALSE(own->viewing(std::span(*copy).first(own->bytes.size() - 1), copy));
    own.reset();
    Backtrace again = OrcUnwinder(*kernel).unwind(regs);
    REQUIRE(again.frames.size() == 3);
    CHECK(again.frames[2].symbol == "f_c+0x5/0x100");
  }
  SECTION("the image's table taken from the host's file alone, nothing of it read from memory") {
    auto own = kernel->orc_image();
    REQUIRE(own);
    auto copy = std::make_shared<std::vector<std::uint8_t>>(own->bytes.begin(), own->bytes.end());
    copy->resize(copy->size() + 100, 0xee);
    auto fresh = synthetic_kernel(ram, syms);
    auto table = image_orc_table(*fresh, *copy, copy);
    CHECK(table->bytes.size() == own->bytes.size());  // the entries the symbols count, not the window
    CHECK(table->low == own->low);
    CHECK(table->high == own->high);
    fresh->keep_orc_image(table);
    // The guest's copy of the table is gone: the unwind reads the file's.
    std::vector<std::uint8_t> zeros(own->bytes.size(), 0);
    ram.write(0x300000, std::as_bytes(std::span(zeros).first(4 * 4)));   // its ips
    ram.write(0x310000, std::as_bytes(std::span(zeros).first(4 * 6)));  // its entries
    Backtrace from_file = OrcUnwinder(*fresh).unwind(regs);
    REQUIRE(from_file.frames.size() == 3);
    CHECK(from_file.frames[2].symbol == "f_c+0x5/0x100");
    auto from_memory = synthetic_kernel(ram, syms);  // the zeroed copy in memory does not unwind
    CHECK(OrcUnwinder(*from_memory).unwind(regs).frames.size() != 3);
    CHECK_THROWS_AS(image_orc_table(*fresh, std::span(*copy).first(own->bytes.size() - 1), copy), Error);
  }
}

// A struct this test binary's own DWARF describes, for checking DwarfTypes against the compiler.
struct immortal_dwarf_probe {
  int a;
  long b;
  union {
    int c;
    char d[8];
  };
  unsigned flags : 5, level : 3;
  struct {
    short x;
  } nested;
};
immortal_dwarf_probe immortal_dwarf_probe_instance;

TEST_CASE("ORC entries of Linux 6.4 on (type:3, signal:1; end of stack a type) unwind the same", "[introspection]") {
  VectorMemory ram(1 << 23);
  map_kernel_image(ram);
  auto types = linux_like_types();
  types->add("orc_entry", "type", 4, 4, 3, 8);
  types->add("orc_entry", "signal", 4, 4, 1, 11);
  types->add_size("orc_entry", 6);
  KernelLayout layout;
  layout.page_table = 0x1000;
  std::string syms = std::string(kKallsyms) +
                     "ffffffff80300000 R __start_orc_unwind_ip\n"
                     "ffffffff80300010 R __stop_orc_unwind_ip\n"
                     "ffffffff80310000 R __start_orc_unwind\n"
                     "ffffffff80400000 t f_a\n"
                     "ffffffff80400100 t f_b\n"
                     "ffffffff80400200 t f_c\n"
                     "ffffffff80400300 t f_end\n";
  auto kernel = Kernel::assemble(ram, layout, SymbolTable::from_kallsyms(syms), std::move(types), "6.12.0-test");
  // 6.4 layout: type:3 at bit 8 (signal, bit 11, left 0).
  auto entry = [&](int i, std::uint64_t ip_phys, std::int16_t sp_offset, int sp_reg, int type) {
    put_orc_entry(ram, i, ip_phys, sp_offset, static_cast<std::uint16_t>(sp_reg | type << 8));
  };
  entry(0, 0x400000, 16, 5, 2);  // ORC_TYPE_CALL is 2 from 6.4
  entry(1, 0x400100, 8, 5, 2);
  entry(2, 0x400200, 0, 0, 1);   // ORC_TYPE_END_OF_STACK
  entry(3, 0x400300, 0, 0, 0);
  const std::uint64_t stack = 0x500000;
  ram.put<std::uint64_t>(stack + 8, kva(0x400120));
  ram.put<std::uint64_t>(stack + 16, kva(0x400205));
  X86Registers regs;
  regs.rip = kva(0x400010);
  regs.rsp = kva(stack);
  Backtrace bt = OrcUnwinder(*kernel).unwind(regs);
  INFO(bt.problem);
  REQUIRE(bt.frames.size() == 3);
  CHECK(bt.frames[2].symbol == "f_c+0x5/0x100");
  CHECK(bt.problem.empty());  // the end of the stack, not an undefined entry
  CHECK_THAT(check_kernel_support(*kernel).summary(), Catch::Contains("ORC unwinding (6.4 layout)"));
}

TEST_CASE("DWARF types agree with the compiler's own layout", "[introspection]") {
  auto types = DwarfTypes::open("/proc/self/exe");
  CHECK(types->struct_size("immortal_dwarf_probe") == sizeof(immortal_dwarf_probe));
  CHECK(types->offset_of("immortal_dwarf_probe", "b") == offsetof(immortal_dwarf_probe, b));
  CHECK(types->offset_of("immortal_dwarf_probe", "c") == offsetof(immortal_dwarf_probe, c));  // through the anonymous union
  CHECK(types->require_field("immortal_dwarf_probe", "d").size == 8);
  CHECK(types->offset_of("immortal_dwarf_probe", "nested.x") == offsetof(immortal_dwarf_probe, nested.x));
  // The bitfield: set level in a real object and find it where DWARF says it is.
  FieldInfo level = types->require_field("immortal_dwarf_probe", "level");
  CHECK(level.bit_size == 3);
  immortal_dwarf_probe probe{};
  probe.level = 5;
  unsigned char byte;
  std::memcpy(&byte, reinterpret_cast<const char*>(&probe) + level.bit_offset / 8, 1);
  CHECK(((byte >> (level.bit_offset % 8)) & 7) == 5);
  CHECK_FALSE(types->field("immortal_dwarf_probe", "missing").has_value());
  CHECK_FALSE(types->struct_size("no_such_struct").has_value());
  CHECK_THROWS_WITH(DwarfTypes::open("/nonexistent/vmlinux"), Catch::Contains("cannot open"));
  CHECK_THROWS_WITH(DwarfTypes::open("/dev/null"), Catch::Contains("no usable DWARF"));
}
