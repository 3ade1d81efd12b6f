// The kernel image's symbols as a shareable block (kernel/image_symbols.h) and the two-layer
// symbol table over it: the same answers as one table of everything, for guests whose KASLR slides
// differ, and a block from elsewhere checked before it is used.
#include "kernel/image_symbols.h"
#include "kernel/symbols.h"

#include <catch2/catch.hpp>
#include <fmt/format.h>

#include <algorithm>
#include <cstring>
#include <random>

using namespace immortal;

namespace {

struct Plain {
  std::uint64_t address;
  std::string name, module;
  char type;
};

// kallsyms text of an image at base and two modules; equal addresses, duplicate names, and a
// module symbol at the same address as another's.
std::string kallsyms(std::uint64_t base, std::vector<Plain>* out = nullptr) {
  std::mt19937_64 random(7);
  std::vector<Plain> image, modules;
  std::uint64_t at = base;
  for (int i = 0; i < 3000; ++i) {
    image.push_back({at, fmt::format("fn_{}", i % 2900), "", (i % 3) ? 't' : 'T'});
    at += random() % 5 == 0 ? 0 : 16 + random() % 300;
  }
  image.push_back({base + 0x2000000, "data_far", "", 'D'});
  for (int i = 0; i < 200; ++i)
    modules.push_back({0xffffffffc0600000u + 64u * static_cast<unsigned>(i / 2 * 2), fmt::format("m_{}", i % 150),
                       i < 100 ? "mod_a" : "mod_b", 't'});
  std::string text = "0000000000001000 D per_cpu_thing\n";
  for (const auto& s : image) text += fmt::format("{:016x} {} {}\n", s.address, s.type, s.name);
  for (const auto& s : modules) text += fmt::format("{:016x} {} {}\t[{}]\n", s.address, s.type, s.name, s.module);
  if (out) {
    *out = image;
    out->insert(out->end(), modules.begin(), modules.end());
    std::stable_sort(out->begin(), out->end(), [](const Plain& a, const Plain& b) { return a.address < b.address; });
  }
  return text;
}

}  // namespace

TEST_CASE("symbols: the image's layer answers as one sorted table did", "[introspection]") {
  std::vector<Plain> all;
  const std::uint64_t base = 0xffffffff81000000u;
  SymbolTable t = SymbolTable::from_kallsyms(kallsyms(base, &all));
  REQUIRE(t.image_symbols());
  CHECK(t.image_base() == base);
  CHECK(t.size() == all.size());
  CHECK(t.percpu_offset("per_cpu_thing") == 0x1000u);
  // The reference: the last symbol at or below, if any lies above and it is within 1 MiB.
  auto reference = [&](std::uint64_t a) -> const Plain* {
    auto it = std::upper_bound(all.begin(), all.end(), a, [](std::uint64_t x, const Plain& s) { return x < s.address; });
    if (it == all.begin() || it == all.end() || a - (it - 1)->address > (1 << 20)) return nullptr;
    return &*(it - 1);
  };
  std::mt19937_64 random(11);
  std::vector<std::uint64_t> probes = {base - 1, base, base + 1, 0xffffffffc0600000u, 0xffffffffc0600000u + 64 * 99,
                                       all.back().address, all.back().address + 1, base + 0x2000000 - 1};
  for (int i = 0; i < 4000; ++i) probes.push_back(all[random() % all.size()].address + random() % 400 - 200);
  for (std::uint64_t a : probes) {
    const Plain* want = reference(a);
    auto got = t.lookup(a);
    INFO(fmt::format("{:#x}", a));
    REQUIRE(got.has_value() == (want != nullptr));
    if (!want) continue;
    CHECK(got->address == want->address);
    CHECK(got->name() == want->name);
    CHECK(got->module() == want->module);
    CHECK(got->type() == want->type);
    auto next = t.next_after(*got);
    auto it = std::upper_bound(all.begin(), all.end(), got->address, [](std::uint64_t x, const Plain& s) { return x < s.address; });
    REQUIRE(next.has_value() == (it != all.end()));
    if (next) CHECK(next->address == it->address);
  }
  // Names: the first definition in address order, the image's before the modules'.
  for (int i : {0, 5, 2899, 2950}) {
    std::string name = fmt::format("fn_{}", i % 2900);
    auto first = std::find_if(all.begin(), all.end(), [&](const Plain& s) { return s.name == name; });
    CHECK(t.address_of(name) == first->address);
    CHECK(t.address_in(name, "") == first->address);
  }
  CHECK(t.address_in("m_120", "mod_b").has_value());
  CHECK_FALSE(t.address_in("m_120", "mod_a").has_value());
  CHECK_FALSE(t.address_of("no_such").has_value());
  CHECK(t.describe(base + 0x2000000 + 4).starts_with("data_far+0x4/"));  // ends where the modules begin
  CHECK(t.describe(all.back().address + 4).starts_with("0x"));         // the last symbol has no end
}

TEST_CASE("symbols: guests of one kernel at other KASLR slides share the image's layer", "[introspection]") {
  SymbolTable a = SymbolTable::from_kallsyms(kallsyms(0xffffffff81000000u));
  SymbolTable b = SymbolTable::from_kallsyms(kallsyms(0xffffffffa3200000u));
  REQUIRE(a.image_symbols());
  REQUIRE(b.image_symbols());
  CHECK(a.image_symbols()->digest() == b.image_symbols()->digest());
  CHECK(b.share_image(a.image_symbols()));
  CHECK(b.image_symbols().get() == a.image_symbols().get());
  CHECK(b.address_of("fn_17") == *a.address_of("fn_17") - 0xffffffff81000000u + 0xffffffffa3200000u);
  CHECK(b.lookup(*b.address_of("fn_17") + 1)->name() == "fn_17");
  CHECK(b.lookup(0xffffffffc0600000u)->module() == "mod_a");
  // Another kernel's block is not taken.
  SymbolTable other = SymbolTable::from_kallsyms("ffffffff81000000 T _stext\nffffffff81000010 T other\n");
  CHECK_FALSE(other.share_image(a.image_symbols()));
  CHECK(other.address_of("other") == 0xffffffff81000010u);
  // A copy of a table shares its image's layer.
  SymbolTable copy = b;
  CHECK(copy.image_symbols().get() == a.image_symbols().get());
}

TEST_CASE("symbols: a block of image symbols from elsewhere is checked before use", "[introspection]") {
  SymbolTable t = SymbolTable::from_kallsyms(kallsyms(0xffffffff81000000u));
  auto bytes = t.image_symbols()->bytes();
  std::vector<std::uint8_t> copy(bytes.begin(), bytes.end());
  std::string why;
  auto good = ImageSymbols::view(copy, nullptr, &why);
  REQUIRE(good);
  CHECK(good->digest() == t.image_symbols()->digest());
  CHECK(t.share_image(good));
  CHECK(t.lookup(0xffffffff81000001u)->name() == SymbolTable::from_kallsyms(kallsyms(0xffffffff81000000u)).lookup(0xffffffff81000001u)->name());

  auto refused = [&](std::vector<std::uint8_t> b) {
    why.clear();
    bool none = ImageSymbols::view(b, nullptr, &why) == nullptr;
    return none && !why.empty();
  };
  CHECK(refused({}));
  CHECK(refused(std::vector<std::uint8_t>(copy.begin(), copy.end() - 1)));  // cut short
  auto padded = copy;
  padded.resize(copy.size() * 2);  // a window's padding is not part of the block
  REQUIRE(ImageSymbols::view(padded, nullptr));
  CHECK(ImageSymbols::view(padded, nullptr)->digest() == good->digest());
  auto bad = copy;
  bad[8] = 9;  // another version
  CHECK(refused(bad));
  bad = copy;
  std::uint32_t slots;
  std::memcpy(&slots, bad.data() + 16, 4);
  slots = 3;  // not a power of two
  std::memcpy(bad.data() + 16, &slots, 4);
  CHECK(refused(bad));
  bad = copy;
  std::memcpy(bad.data() + 64, "\xff\xff\xff\x7f", 4);  // the first symbol out of order
  CHECK(refused(bad));
  bad = copy;
  std::memcpy(bad.data() + 64 + 4, "\xff\xff\xff\x7f", 4);  // its name outside the block
  CHECK(refused(bad));
  // Every hash slot taken: a probe for a missing name would never end.
  bad = copy;
  std::uint32_t count;
  std::memcpy(&count, bad.data() + 12, 4);
  std::memcpy(&slots, bad.data() + 16, 4);
  for (std::uint32_t s = 0; s < slots; ++s) std::memcpy(bad.data() + 64 + 8 * count + 4 * s, "\0\0\0\0", 4);
  CHECK(refused(bad));
  // A table whose text had no image symbols has no layer, and still answers for its modules.
  SymbolTable modules_only = SymbolTable::from_kallsyms("ffffffffc0600000 t helper\t[mod_a]\nffffffffc0600040 t b\t[mod_a]\n");
  CHECK_FALSE(modules_only.image_symbols());
  CHECK(modules_only.lookup(0xffffffffc0600004u)->name() == "helper");
}

TEST_CASE("symbols: kallsyms without the image's lines, beside the host's block, answers as the whole", "[introspection]") {
  // The host's block: the first guest's, at its slide.
  auto host = SymbolTable::from_kallsyms(kallsyms(0xffffffff81000000u)).image_symbols();
  REQUIRE(host);
  for (std::uint64_t base : {0xffffffff81000000u, 0xffffffffa3200000u}) {
    INFO(fmt::format("base {:#x}", base));
    std::string text = kallsyms(base);
    SymbolTable whole = SymbolTable::from_kallsyms(text);
    auto rest = kallsyms_without_image(text, *host, base);
    REQUIRE(rest);
    // The per-CPU variables and the modules' lines stay; the image's go.
    CHECK(rest->find("per_cpu_thing\n") != std::string::npos);
    CHECK(rest->find("m_120\t[mod_b]\n") != std::string::npos);
    CHECK(rest->find(" fn_17\n") == std::string::npos);
    CHECK(rest->size() < text.size() / 5);
    SymbolTable part = SymbolTable::from_kallsyms(*rest, host, base);
    CHECK(part.image_symbols().get() == host.get());
    CHECK(part.image_base() == base);
    CHECK(part.size() == whole.size());
    CHECK(part.percpu_offset("per_cpu_thing") == 0x1000u);
    std::mt19937_64 random(13);
    for (int i = 0; i < 3000; ++i) {
      std::uint64_t a = base + random() % 0x2100000;
      if (i % 3 == 0) a = 0xffffffffc0600000u + random() % 0x2000;
      INFO(fmt::format("{:#x}", a));
      CHECK(part.describe(a) == whole.describe(a));
    }
    for (const char* name : {"fn_0", "fn_2899", "data_far", "m_3", "m_149"})
      CHECK(part.address_of(name) == whole.address_of(name));
    CHECK(part.address_in("m_120", "mod_b") == whole.address_in("m_120", "mod_b"));
  }
  // Another kernel's block, or this one's at another base: the text is not cut.
  auto other = SymbolTable::from_kallsyms("ffffffff81000000 T _stext\nffffffff81000010 T other\n").image_symbols();
  CHECK_FALSE(kallsyms_without_image(kallsyms(0xffffffff81000000u), *other, 0xffffffff81000000u));
  CHECK_FALSE(kallsyms_without_image(kallsyms(0xffffffff81000000u), *host, 0xffffffff81200000u));
  // An image symbol the block cannot hold (more than 4 GiB above its base) stays in the text.
  std::string far = "ffff888000000000 T low\nffff888000000040 T low_two\nffffffff81000000 T high\n";
  SymbolTable far_whole = SymbolTable::from_kallsyms(far);
  auto far_rest = kallsyms_without_image(far, *far_whole.image_symbols(), far_whole.image_base());
  REQUIRE(far_rest);
  CHECK(*far_rest == "ffffffff81000000 T high\n");
  SymbolTable far_part = SymbolTable::from_kallsyms(*far_rest, far_whole.image_symbols(), far_whole.image_base());
  CHECK(far_part.address_of("high") == 0xffffffff81000000u);
  CHECK(far_part.address_of("low_two") == 0xffff888000000040u);
  CHECK(far_part.size() == 3);
}
