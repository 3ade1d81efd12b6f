#include "support/fake_kallsyms.h"

#include <fmt/format.h>

namespace immortal::test {

using namespace kallsyms_layout;

std::string tiny_btf() {
  std::string types, strings("\0int\0", 5);
  auto u32 = [](std::string& s, std::uint32_t v) { s.append(reinterpret_cast<const char*>(&v), 4); };
  u32(types, 1);        // name_off "int"
  u32(types, 1u << 24); // BTF_KIND_INT
  u32(types, 4);        // size
  u32(types, 32);       // 32 bits, unsigned
  std::string btf;
  btf += '\x9f';
  btf += '\xeb';
  btf += '\x01';  // version
  btf += '\x00';  // flags
  u32(btf, 24);   // hdr_len
  u32(btf, 0);    // type_off
  u32(btf, static_cast<std::uint32_t>(types.size()));
  u32(btf, static_cast<std::uint32_t>(types.size()));  // str_off
  u32(btf, static_cast<std::uint32_t>(strings.size()));
  return btf + types + strings;
}

FakeKallsyms::FakeKallsyms() {
  for (int c = 0x21; c < 0x7f; ++c) tokens[c] = std::string(1, static_cast<char>(c));
  tokens[1] = "start_";
  tokens[2] = "Tstart";  // a token spanning the type letter and the name
  tokens[3] = "kernel";
  std::string btf = tiny_btf();
  symbols = {
      {'A', "fixed_percpu_data", 0},
      {'A', "current_task", 0x1fbc0},
      {'T', "_stext", kva(kText)},
      {'T', "start_kernel", kva(kText + 0x100)},
      {'t', "do_idle", kva(kText + 0x200)},
      {'T', std::string(200, 'x'), kva(kText + 0x300)},  // a "big" symbol: 2-byte length
      {'D', "init_top_pgt", kva(0x1000)},
      {'D', "page_offset_base", kva(kPageOffsetBase)},
      {'R', "__start_BTF", kva(kBtf)},
      {'R', "__stop_BTF", kva(kBtf + btf.size())},
      {'D', "linux_banner", kva(kBanner)},
  };
  vmcoreinfo = fmt::format(
      "OSRELEASE=6.1.0-test\nPAGESIZE=4096\nSYMBOL(init_top_pgt)={:x}\nNUMBER(phys_base)=0\n"
      "NUMBER(pgtable_l5_enabled)=0\nKERNELOFFSET=0\nSYMBOL(kallsyms_names)={:x}\nSYMBOL(kallsyms_num_syms)={:x}\n"
      "SYMBOL(kallsyms_token_table)={:x}\nSYMBOL(kallsyms_token_index)={:x}\nSYMBOL(kallsyms_offsets)={:x}\n"
      "SYMBOL(kallsyms_relative_base)={:x}\n",
      kva(0x1000), kva(kNames), kva(kNumSyms), kva(kTokenTable), kva(kTokenIndex), kva(kOffsets),
      kva(kRelativeBase));
}

std::string FakeKallsyms::compress(const std::string& text) const {
  std::string out;
  for (std::size_t i = 0; i < text.size();) {
    int best = static_cast<unsigned char>(text[i]);
    for (int code : {1, 2, 3})
      if (text.compare(i, tokens[code].size(), tokens[code]) == 0 && tokens[code].size() > tokens[best].size())
        best = code;
    out += static_cast<char>(best);
    i += tokens[best].size();
  }
  return out;
}

void FakeKallsyms::write(VectorMemory& ram) const {
  map_kernel_image(ram);
  // relative_base is the lowest address of a non-absolute symbol (scripts/kallsyms.c record_relative_base).
  std::uint64_t base = kKernelBase;
  ram.put<std::uint64_t>(kRelativeBase, base);
  ram.put<std::uint32_t>(kNumSyms, static_cast<std::uint32_t>(symbols.size()));
  std::string names;
  for (std::size_t i = 0; i < symbols.size(); ++i) {
    const auto& s = symbols[i];
    // CONFIG_KALLSYMS_ABSOLUTE_PERCPU: absolute symbols as they are, others relative_base - 1 - address.
    std::int32_t off = s.type == 'A' ? static_cast<std::int32_t>(s.address)
                                     : static_cast<std::int32_t>(static_cast<std::int64_t>(base - 1 - s.address));
    ram.put<std::int32_t>(kOffsets + 4 * i, off);
    std::string c = compress(std::string(1, s.type) + s.name);
    if (c.size() <= 0x7f) {
      names += static_cast<char>(c.size());
    } else {
      names += static_cast<char>((c.size() & 0x7f) | 0x80);
      names += static_cast<char>(c.size() >> 7);
    }
    names += c;
  }
  ram.put_bytes(kNames, names);
  std::string table;
  for (int i = 0; i < 256; ++i) {
    ram.put<std::uint16_t>(kTokenIndex + 2 * i, static_cast<std::uint16_t>(table.size()));
    table += tokens[i] + '\0';
  }
  ram.put_bytes(kTokenTable, table);
  ram.put_bytes(kBtf, tiny_btf());
  ram.put_bytes(kBanner, std::string("Linux version 6.1.0-banner (debian-kernel@lists.debian.org) #1 SMP") + '\0');
  ram.put<std::uint64_t>(kPageOffsetBase, 0xffff888000000000ull);
}

std::string FakeKallsyms::expected_kallsyms() const {
  std::string out;
  for (const auto& s : symbols) out += fmt::format("{:016x} {} {}\n", s.address, s.type, s.name);
  return out;
}

}  // namespace immortal::test
