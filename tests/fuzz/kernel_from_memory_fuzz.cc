// Fuzz target: a profile rebuilt from a dumped kernel's own memory (profile_from_memory), then
// the kernel opened with it. A synthetic Linux 6.1-like kernel (tests/support/fake_kallsyms.h:
// compressed kallsyms tables, BTF, linux_banner, VMCOREINFO) is laid out once; the input then
// overwrites parts of it. profile_from_memory promises Error(bad_input) for memory that lacks
// what it needs (it turns MemoryFault into Error), and so does Kernel::open: only Error may
// escape. Anything else (a sanitizer report, another exception such as MemoryFault, a hang, an
// unbounded allocation) is a finding.
//
// Input: sections in this order, each a little-endian u16 length then that many bytes (cut
// short where the input ends); a section's bytes overwrite the pristine kernel from the
// region's start (what goes past the region is dropped), missing sections leave it pristine:
//   0  extra VMCOREINFO lines, appended (later lines override: SYMBOL(kallsyms_names)=..., ...)
//   1  kallsyms_relative_base (u64) then kallsyms_num_syms (u32)
//   2  kallsyms_offsets          3  kallsyms_names          4  kallsyms_token_index
//   5  kallsyms_token_table      6  the BTF at __start_BTF   7  linux_banner
// An empty input is the valid synthetic kernel.
#include "base/error.h"
#include "kernel/kernel.h"
#include "kernel/vmcoreinfo.h"
#include "profile/guest_profile.h"
#include "profile/profile_from_memory.h"
#include "support/fake_kallsyms.h"
#include "support/fake_kernel.h"

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <string>
#include <string_view>
#include <vector>

using namespace immortal;
using namespace immortal::test;
using namespace immortal::test::kallsyms_layout;

namespace {

struct Region {
  std::uint64_t phys, size;
};
// Sections 1..7; each region ends before the next table (see kallsyms_layout).
constexpr Region kRegions[] = {
    {kRelativeBase, 12}, {kOffsets, 0x1000},    {kNames, 0x4000}, {kTokenIndex, 0x200},
    {kTokenTable, 0x1000}, {kBtf, 0x1000}, {kBanner, 0x100},
};
constexpr std::size_t kRamSize = 1 << 22;

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  static VectorMemory ram(kRamSize);
  static const FakeKallsyms fake;
  static const std::vector<std::string> pristine = [] {
    fake.write(ram);
    std::vector<std::string> out;
    for (const auto& r : kRegions) {
      std::string bytes(r.size, '\0');
      ram.read(r.phys, std::as_writable_bytes(std::span(bytes.data(), bytes.size())));
      out.push_back(std::move(bytes));
    }
    return out;
  }();

  std::size_t at = 0;
  auto section = [&]() -> std::string_view {
    if (size - at < 2) {
      at = size;
      return {};
    }
    std::size_t n = static_cast<std::size_t>(data[at]) | static_cast<std::size_t>(data[at + 1]) << 8;
    at += 2;
    n = std::min(n, size - at);
    std::string_view out(reinterpret_cast<const char*>(data + at), n);
    at += n;
    return out;
  };
  std::string vmcoreinfo = fake.vmcoreinfo;
  vmcoreinfo += section();
  for (std::size_t i = 0; i < std::size(kRegions); ++i) {
    ram.put_bytes(kRegions[i].phys, pristine[i]);
    std::string_view bytes = section();
    ram.write(kRegions[i].phys, std::as_bytes(std::span(bytes.data(), std::min<std::size_t>(bytes.size(), kRegions[i].size))));
  }

  GuestProfile profile;
  try {
    profile = profile_from_memory(ram, Vmcoreinfo::parse(vmcoreinfo));
  } catch (const Error&) {
    return 0;
  }
  if (profile.kallsyms.size() > GuestProfile::kMaxFileSize || profile.btf_vmlinux.size() > GuestProfile::kMaxFileSize)
    __builtin_trap();
  try {
    auto kernel = Kernel::open(ram, profile, vmcoreinfo);
    (void)kernel->symbols().describe(kva(kText + 0x105));
  } catch (const Error&) {
  }
  return 0;
}
