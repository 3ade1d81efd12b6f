// profile_from_memory on synthetic kernels: kallsyms tables compressed the way scripts/kallsyms.c
// writes them (token table, 1- and 2-byte lengths, base-relative offsets with absolute per-CPU
// symbols), BTF between __start_BTF and __stop_BTF; then hostile tables (absurd counts, lengths
// and token offsets that run off memory) that must end in Error, never a crash or a hang.
// A [.fixture] case checks a real Debian 6.1 dump when /tmp/fixtures has one.
#include "base/error.h"
#include "kernel/kernel.h"
#include "kernel/vmcoreinfo.h"
#include "memory/elf_core.h"
#include "profile/guest_profile.h"
#include "profile/profile_from_memory.h"
#include "support/fake_kallsyms.h"
#include "support/fake_kernel.h"

#include <catch2/catch.hpp>

#include <fmt/format.h>

#include <algorithm>
#include <filesystem>
#include <random>
#include <set>
#include <sstream>

using namespace immortal;
using namespace immortal::test;

namespace {

using namespace kallsyms_layout;

GuestProfile build(const VectorMemory& ram, const std::string& vmcoreinfo) {
  return profile_from_memory(ram, Vmcoreinfo::parse(vmcoreinfo));
}

std::string replace(std::string text, const std::string& from, const std::string& to) {
  auto at = text.find(from);
  REQUIRE(at != std::string::npos);
  return text.replace(at, from.size(), to);
}

}  // namespace

TEST_CASE("a profile is rebuilt from the kernel's own kallsyms tables and BTF", "[profile_from_memory]") {
  VectorMemory ram(1 << 22);
  FakeKallsyms fake;
  fake.write(ram);
  GuestProfile profile = build(ram, fake.vmcoreinfo);
  CHECK(profile.kallsyms == fake.expected_kallsyms());
  CHECK(profile.btf_vmlinux == tiny_btf());
  CHECK(profile.kernel_release == "6.1.0-test");
  CHECK(profile.modules.empty());

  // The result opens the kernel as a healthy-guest profile would.
  auto kernel = Kernel::open(ram, profile, fake.vmcoreinfo);
  CHECK(kernel->symbol("start_kernel") == kva(kText + 0x100));
  CHECK(kernel->symbols().percpu_offset("current_task") == 0x1fbc0u);
  CHECK(kernel->symbols().describe(kva(kText + 0x205)) == "do_idle+0x5/0x100");
  CHECK(kernel->memory().layout().page_offset_base == 0xffff888000000000ull);
  CHECK(kernel->release() == "6.1.0-test");

  SECTION("without OSRELEASE the release comes from linux_banner") {
    GuestProfile p = build(ram, replace(fake.vmcoreinfo, "OSRELEASE=6.1.0-test\n", ""));
    CHECK(p.kernel_release == "6.1.0-banner");
  }
  SECTION("a negative phys_base moves the page tables down, as VMCOREINFO says") {
    // Move the page tables to 0x5000 and say the kernel was loaded 0x4000 below its link address
    // (VMCOREINFO's phys_base is then negative: init_top_pgt's physical address = symbol - map + phys_base).
    map_kernel_image(ram);
    std::uint64_t pml4 = ram.read_value<std::uint64_t>(0x1000 + 511 * 8);
    ram.put<std::uint64_t>(0x5000 + 511 * 8, (pml4 & ~0xfffull) | 0x3);
    ram.put<std::uint64_t>(0x1000 + 511 * 8, 0);  // the old table no longer maps the kernel
    std::string vi = replace(fake.vmcoreinfo, fmt::format("SYMBOL(init_top_pgt)={:x}", kva(0x1000)),
                             fmt::format("SYMBOL(init_top_pgt)={:x}", kva(0x9000)));
    vi = replace(vi, "NUMBER(phys_base)=0", "NUMBER(phys_base)=-16384");
    CHECK(build(ram, vi).kallsyms == fake.expected_kallsyms());
  }
}

TEST_CASE("kallsyms without absolute per-CPU symbols are plain offsets from relative_base", "[profile_from_memory]") {
  VectorMemory ram(1 << 22);
  FakeKallsyms fake;
  fake.symbols.erase(fake.symbols.begin(), fake.symbols.begin() + 2);  // no per-CPU symbols
  fake.write(ram);
  // Rewrite the offsets as !CONFIG_KALLSYMS_ABSOLUTE_PERCPU does: u32 address - relative_base.
  for (std::size_t i = 0; i < fake.symbols.size(); ++i)
    ram.put<std::uint32_t>(kOffsets + 4 * i, static_cast<std::uint32_t>(fake.symbols[i].address - kKernelBase));
  ram.put<std::uint64_t>(kRelativeBase, kKernelBase);
  CHECK(build(ram, fake.vmcoreinfo).kallsyms == fake.expected_kallsyms());
}

TEST_CASE("hostile kallsyms tables end in a clear error, never a crash or a hang", "[profile_from_memory]") {
  VectorMemory ram(1 << 22);
  FakeKallsyms fake;
  fake.write(ram);
  auto refused = [&](const std::string& vi, const std::string& words) {
    try {
      build(ram, vi);
      FAIL("accepted");
    } catch (const Error& e) {
      CHECK(e.code() == ExitCode::bad_input);
      CHECK_THAT(e.what(), Catch::Contains(words));
    }
  };

  SECTION("VMCOREINFO without the kallsyms symbols (kernels before 6.0)") {
    refused(replace(fake.vmcoreinfo, "SYMBOL(kallsyms_names)", "SYMBOL(other)"), "SYMBOL(kallsyms_names)");
  }
  SECTION("no init_top_pgt") {
    refused(replace(fake.vmcoreinfo, "SYMBOL(init_top_pgt)", "SYMBOL(other)"), "SYMBOL(init_top_pgt)");
  }
  SECTION("page tables elsewhere (a wrong phys_base)") {
    refused(replace(fake.vmcoreinfo, "NUMBER(phys_base)=0", "NUMBER(phys_base)=1073741824"), "cannot read");
  }
  SECTION("absurd symbol counts") {
    ram.put<std::uint32_t>(kNumSyms, 0xffffffffu);
    refused(fake.vmcoreinfo, "kallsyms_num_syms");
    ram.put<std::uint32_t>(kNumSyms, 0);
    refused(fake.vmcoreinfo, "kallsyms_num_syms");
    // Plausible by the limit, but its offsets would run past RAM.
    ram.put<std::uint32_t>(kNumSyms, 3'000'000);
    refused(fake.vmcoreinfo, "kallsyms_offsets");
  }
  SECTION("more symbols than names: decoding runs into garbage and is stopped") {
    ram.put<std::uint32_t>(kNumSyms, 20000);  // offsets fit in RAM, names do not exist
    refused(fake.vmcoreinfo, "kallsyms");
  }
  SECTION("a relative base that is not a kernel address") {
    ram.put<std::uint64_t>(kRelativeBase, 0x1234);
    refused(fake.vmcoreinfo, "kallsyms_relative_base");
  }
  SECTION("a length that runs off the end of memory") {
    // Put the names at the very end of RAM: one symbol whose length claims 100 bytes.
    std::uint64_t at = (1 << 22) - 10;
    ram.put<std::uint8_t>(at, 100);
    for (int i = 1; i < 10; ++i) ram.put<std::uint8_t>(at + i, 'x');
    refused(replace(fake.vmcoreinfo, fmt::format("SYMBOL(kallsyms_names)={:x}", kva(kNames)),
                    fmt::format("SYMBOL(kallsyms_names)={:x}", kva(at))),
            "not readable");
  }
  SECTION("names at the top of the address space do not wrap around") {
    refused(replace(fake.vmcoreinfo, fmt::format("SYMBOL(kallsyms_names)={:x}", kva(kNames)),
                    "SYMBOL(kallsyms_names)=fffffffffffffff8"),
            "kallsyms_names");
  }
  SECTION("a zero length, and a 2-byte length beyond what scripts/kallsyms writes") {
    ram.put<std::uint8_t>(kNames, 0);
    refused(fake.vmcoreinfo, "compressed length 0");
    ram.put<std::uint8_t>(kNames, 0xff);
    ram.put<std::uint8_t>(kNames + 1, 0xff);
    refused(fake.vmcoreinfo, "compressed length");
  }
  SECTION("a name that expands past KSYM_NAME_LEN") {
    // Token 4 is 400 characters; symbol 0 uses it twice.
    std::string big(400, 'y');
    ram.put_bytes(kTokenTable + 0x800, big + '\0');
    ram.put<std::uint16_t>(kTokenIndex + 2 * 4, 0x800);
    ram.put<std::uint8_t>(kNames, 3);
    ram.put<std::uint8_t>(kNames + 1, 'A');
    ram.put<std::uint8_t>(kNames + 2, 4);
    ram.put<std::uint8_t>(kNames + 3, 4);
    refused(fake.vmcoreinfo, "expands past");
  }
  SECTION("a token index out of range, and a token without its NUL") {
    ram.put<std::uint16_t>(kTokenIndex + 2 * 'x', 0xffff);
    refused(replace(fake.vmcoreinfo, fmt::format("SYMBOL(kallsyms_token_table)={:x}", kva(kTokenTable)),
                    fmt::format("SYMBOL(kallsyms_token_table)={:x}", kva((1 << 22) - 0x1000))),
            "not readable");
    std::string no_nul(0x600, 'z');
    ram.put_bytes(kTokenTable + 0x800, no_nul);
    ram.put<std::uint16_t>(kTokenIndex + 2 * 'x', 0x800);
    refused(fake.vmcoreinfo, "token");
  }
  SECTION("a token with a newline would forge lines: refused") {
    ram.put_bytes(kTokenTable + 0x800, std::string("a\nffffffff81000000 T forged") + '\0');
    ram.put<std::uint16_t>(kTokenIndex + 2 * 'x', 0x800);
    refused(fake.vmcoreinfo, "unprintable");
  }
  SECTION("no BTF, BTF bounds reversed, and bytes that are not BTF") {
    auto vi = fake.vmcoreinfo;
    ram.put<std::int32_t>(kOffsets + 4 * 9, static_cast<std::int32_t>(static_cast<std::int64_t>(kKernelBase - 1 - kva(kBtf - 8))));
    refused(vi, "BTF bounds");
    ram.put<std::int32_t>(kOffsets + 4 * 9, static_cast<std::int32_t>(static_cast<std::int64_t>(kKernelBase - 1 - kva(kBtf + 64))));
    ram.put<std::uint8_t>(kBtf, 0);
    refused(vi, "not BTF");
    fake.symbols.erase(fake.symbols.begin() + 8, fake.symbols.begin() + 10);
    fake.write(ram);
    refused(vi, "__start_BTF");
  }
  SECTION("random damage to the tables gives a profile or an Error, nothing else") {
    std::mt19937_64 random(1234);
    std::vector<std::pair<std::uint64_t, std::uint64_t>> regions = {
        {kOffsets, 64}, {kRelativeBase, 16}, {kNames, 400}, {kTokenTable, 600}, {kTokenIndex, 512}};
    // One RAM for all rounds (allocating 4 MiB each round is most of the time): the damaged
    // regions are restored from the pristine copy before the next round.
    VectorMemory damaged(1 << 22);
    fake.write(damaged);
    auto save = [&](const std::pair<std::uint64_t, std::uint64_t>& r) {
      std::string bytes(r.second, '\0');
      ram.read(r.first, std::as_writable_bytes(std::span(bytes.data(), bytes.size())));
      return bytes;
    };
    std::vector<std::string> pristine;
    for (const auto& r : regions) pristine.push_back(save(r));
    int refusals = 0;
    for (int round = 0; round < 300; ++round) {
      for (std::size_t r = 0; r < regions.size(); ++r) damaged.put_bytes(regions[r].first, pristine[r]);
      for (int flips = 0; flips < 4; ++flips) {
        auto [start, size] = regions[random() % regions.size()];
        damaged.put<std::uint8_t>(start + random() % size, static_cast<std::uint8_t>(random()));
      }
      try {
        GuestProfile p = build(damaged, fake.vmcoreinfo);
        CHECK(p.kallsyms.size() <= GuestProfile::kMaxFileSize);
      } catch (const Error& e) {
        CHECK(e.code() == ExitCode::bad_input);
        ++refusals;
      }
    }
    CHECK(refusals > 0);
  }
}

// The real thing: a QEMU dump of a Debian 6.1 guest and the agent's profile of the same boot.
// Run with: unit-tests "[.fixture]" (skipped when the fixture is absent).
TEST_CASE("a Debian 6.1 dump describes itself as its healthy-guest profile did", "[.fixture][profile_from_memory]") {
  const std::string core_path = "/tmp/fixtures/v1.core", profile_dir = "/tmp/fixtures/v1-profile";
  if (!std::filesystem::exists(core_path) || !std::filesystem::exists(profile_dir)) {
    WARN("no fixture at " << core_path);
    return;
  }
  auto core = ElfCoreMemory::open(core_path);
  auto note = core->vmcoreinfo();
  REQUIRE(note);
  GuestProfile rebuilt = profile_from_memory(*core, Vmcoreinfo::parse(*note));
  GuestProfile agent = GuestProfile::load(profile_dir);
  CHECK(rebuilt.kernel_release == agent.kernel_release);
  CHECK(rebuilt.btf_vmlinux == agent.btf_vmlinux);

  // Every kernel-image line of the agent's /proc/kallsyms, and nothing else, in the same order.
  auto image_lines = [](const std::string& text) {
    std::vector<std::string> lines;
    std::istringstream in(text);
    for (std::string line; std::getline(in, line);)
      if (line.find('\t') == std::string::npos) lines.push_back(line);
    return lines;
  };
  auto ours = image_lines(rebuilt.kallsyms), theirs = image_lines(agent.kallsyms);
  std::size_t same = 0;
  for (std::size_t i = 0; i < std::min(ours.size(), theirs.size()); ++i) same += ours[i] == theirs[i];
  WARN("kernel-image symbols: " << same << " of " << theirs.size() << " agent lines match (" << ours.size()
                                << " decoded)");
  CHECK(same == theirs.size());
  CHECK(ours.size() == theirs.size());

  // Module symbols (same lines, in the same order) and /proc/modules.
  auto module_lines = [](const std::string& text) {
    std::vector<std::string> lines;
    std::istringstream in(text);
    for (std::string line; std::getline(in, line);)
      if (line.find('\t') != std::string::npos && line.find("\t[bpf]") == std::string::npos) lines.push_back(line);
    return lines;
  };
  auto our_modules = module_lines(rebuilt.kallsyms), their_modules = module_lines(agent.kallsyms);
  std::size_t same_modules = 0;
  for (std::size_t i = 0; i < std::min(our_modules.size(), their_modules.size()); ++i)
    same_modules += our_modules[i] == their_modules[i];
  WARN("module symbols: " << same_modules << " of " << their_modules.size() << " agent lines match ("
                          << our_modules.size() << " decoded)");
  CHECK(our_modules == their_modules);
  CHECK(rebuilt.modules == agent.modules);

  auto kernel = Kernel::open(*core, rebuilt, *note);
  CHECK(kernel->symbol("init_task") == Kernel::open(*core, agent, *note)->symbol("init_task"));
}
