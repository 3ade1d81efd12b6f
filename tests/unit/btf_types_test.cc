// BtfTypes reads the types where the raw BTF lies (types/btf_types.h): its sizes checked against
// libbpf's own btf__resolve_size over every kind that has one, and its answers the same once it
// reads a shared copy of the bytes instead of libbpf's.
#include "types/btf_types.h"

#include <bpf/btf.h>
#include <catch2/catch.hpp>

#include <algorithm>
#include <cstring>
#include <string>
#include <vector>

using namespace immortal;

namespace {

struct BuiltBtf {
  std::string bytes;
  std::vector<std::string> composites;  // every named struct and union
};

// A BTF with every kind whose size a member can have: ints, floats, pointers, enums of both
// widths, arrays of arrays, qualifiers and typedef chains, anonymous members, bitfields.
BuiltBtf build_kinds() {
  struct btf* b = btf__new_empty();
  REQUIRE(b);
  int i32 = btf__add_int(b, "int", 4, BTF_INT_SIGNED);
  int u8 = btf__add_int(b, "unsigned char", 1, 0);
  int i64 = btf__add_int(b, "long", 8, BTF_INT_SIGNED);
  int f64 = btf__add_float(b, "double", 8);
  int ptr = btf__add_ptr(b, i32);
  int e32 = btf__add_enum(b, "colour", 4);
  REQUIRE(btf__add_enum_value(b, "RED", 7) == 0);
  int e64 = btf__add_enum64(b, "big", 8, false);
  REQUIRE(btf__add_enum64_value(b, "HUGE", 1ull << 40) == 0);
  int row = btf__add_array(b, i32, i32, 3);
  int grid = btf__add_array(b, i32, row, 5);  // int[5][3]
  int cst = btf__add_const(b, grid);
  int vol = btf__add_volatile(b, cst);
  int td = btf__add_typedef(b, "grid_t", vol);
  int td2 = btf__add_typedef(b, "grid2_t", td);
  int fwd = btf__add_fwd(b, "opaque", BTF_FWD_STRUCT);
  int fptr = btf__add_ptr(b, fwd);
  int none = btf__add_array(b, i32, i64, 0);
  int inner = btf__add_struct(b, nullptr, 16);
  REQUIRE(btf__add_field(b, "x", i64, 0, 0) == 0);
  REQUIRE(btf__add_field(b, "y", f64, 64, 0) == 0);
  int outer = btf__add_struct(b, "outer", 160);
  REQUIRE(btf__add_field(b, "a", i32, 0, 0) == 0);
  REQUIRE(btf__add_field(b, "flag", u8, 32, 3) == 0);
  REQUIRE(btf__add_field(b, "p", ptr, 64, 0) == 0);
  REQUIRE(btf__add_field(b, "c", e32, 128, 0) == 0);
  REQUIRE(btf__add_field(b, "h", e64, 192, 0) == 0);
  REQUIRE(btf__add_field(b, "g", td2, 256, 0) == 0);
  REQUIRE(btf__add_field(b, nullptr, inner, 768, 0) == 0);
  REQUIRE(btf__add_field(b, "o", fptr, 896, 0) == 0);
  REQUIRE(btf__add_field(b, "empty", none, 960, 0) == 0);
  int u = btf__add_union(b, "either", 8);
  REQUIRE(btf__add_field(b, "l", i64, 0, 0) == 0);
  REQUIRE(btf__add_field(b, "d", f64, 0, 0) == 0);
  int either_t = btf__add_typedef(b, "either_t", u);
  REQUIRE(btf__add_struct(b, "holder", 8) > 0);
  REQUIRE(btf__add_field(b, "e", either_t, 0, 0) == 0);
  REQUIRE((outer > 0 && u > 0));
  __u32 size = 0;
  const void* raw = btf__raw_data(b, &size);
  BuiltBtf out{std::string(static_cast<const char*>(raw), size), {"outer", "either", "holder"}};
  btf__free(b);
  return out;
}

// What libbpf answers for a struct's size and each of its named members' sizes, as the reference.
struct LibbpfSizes {
  std::int64_t size = -1;
  std::vector<std::pair<std::string, std::int64_t>> members;
};
LibbpfSizes libbpf_sizes(const std::string& raw, const std::string& name) {
  struct btf* b = btf__new(raw.data(), static_cast<__u32>(raw.size()));
  REQUIRE(b);
  LibbpfSizes out;
  __s32 id = btf__find_by_name_kind(b, name.c_str(), BTF_KIND_STRUCT);
  if (id < 0) id = btf__find_by_name_kind(b, name.c_str(), BTF_KIND_UNION);
  if (id > 0) {
    out.size = btf__resolve_size(b, static_cast<__u32>(id));
    const btf_type* t = btf__type_by_id(b, static_cast<__u32>(id));
    const btf_member* m = btf_members(t);
    for (__u16 i = 0; i < btf_vlen(t); ++i, ++m)
      if (const char* n = btf__name_by_offset(b, m->name_off); n && *n)
        out.members.emplace_back(n, btf__resolve_size(b, m->type));
  }
  btf__free(b);
  return out;
}

struct Answers {
  std::vector<std::optional<std::uint64_t>> sizes;
  std::vector<std::optional<FieldInfo>> fields;
  std::optional<std::int64_t> red, huge;
};

Answers ask(const BtfTypes& t) {
  Answers a;
  for (const char* s : {"outer", "either", "holder", "missing"}) a.sizes.push_back(t.struct_size(s));
  for (const char* f : {"a", "flag", "p", "c", "h", "g", "x", "y", "o", "empty", "nothing"}) a.fields.push_back(t.field("outer", f));
  a.fields.push_back(t.field("holder", "e.d"));
  a.red = t.enumerator("RED");
  a.huge = t.enumerator("HUGE");
  return a;
}

}  // namespace

TEST_CASE("BTF sizes read in place are libbpf's", "[btf]") {
  BuiltBtf built = build_kinds();
  auto types = BtfTypes::parse(built.bytes);
  for (const auto& name : built.composites) {
    INFO(name);
    auto ours = types->struct_size(name);
    REQUIRE(ours);
    LibbpfSizes reference = libbpf_sizes(built.bytes, name);
    CHECK(static_cast<std::int64_t>(*ours) == reference.size);
    CHECK(!reference.members.empty());
    for (const auto& [member, size] : reference.members) {
      INFO(member);
      auto field = types->field(name, member);
      REQUIRE(field);
      CHECK(static_cast<std::int64_t>(field->size) == std::max<std::int64_t>(size, 0));
    }
  }
  auto g = types->field("outer", "g");
  REQUIRE(g);
  CHECK(g->size == 60);  // const volatile int[5][3] through two typedefs
  CHECK(g->byte_offset() == 32);
  auto flag = types->field("outer", "flag");
  REQUIRE(flag);
  CHECK(flag->bit_size == 3);
  CHECK(types->field("outer", "p")->size == 8);
  CHECK(types->field("outer", "h")->size == 8);
  CHECK(types->field("outer", "y")->byte_offset() == 104);  // in the anonymous member at 96
  CHECK(types->field("outer", "o")->size == 8);              // a pointer to a forward declaration
  CHECK(types->field("outer", "empty")->size == 0);
  CHECK(types->field("holder", "e.d")->size == 8);
  CHECK(types->enumerator("RED") == 7);
  CHECK_FALSE(types->struct_size("missing"));
}

TEST_CASE("BTF read from a shared copy answers as from its own", "[btf]") {
  BuiltBtf built = build_kinds();
  auto own = BtfTypes::parse(built.bytes);
  Answers before = ask(*own);
  CHECK_FALSE(own->shared());
  std::string digest = own->digest();
  CHECK(digest.size() == 32);

  // The shared copy may be longer (a window padded to a power of two).
  auto copy = std::make_shared<std::vector<std::uint8_t>>(built.bytes.begin(), built.bytes.end());
  copy->resize(copy->size() + 4096, 0);
  auto shared = BtfTypes::parse(built.bytes);
  REQUIRE(shared->share(*copy, copy));
  CHECK(shared->shared());
  CHECK(shared->bytes().data() == copy->data());
  CHECK(shared->bytes().size() == built.bytes.size());
  CHECK(shared->digest() == digest);
  Answers after = ask(*shared);
  CHECK(after.sizes == before.sizes);
  REQUIRE(after.fields.size() == before.fields.size());
  for (std::size_t i = 0; i < after.fields.size(); ++i) {
    INFO(i);
    REQUIRE(after.fields[i].has_value() == before.fields[i].has_value());
    if (after.fields[i]) {
      CHECK(after.fields[i]->bit_offset == before.fields[i]->bit_offset);
      CHECK(after.fields[i]->bit_size == before.fields[i]->bit_size);
      CHECK(after.fields[i]->size == before.fields[i]->size);
    }
  }
  CHECK(after.red == before.red);
  CHECK(after.huge == before.huge);
  CHECK(shared->type_count() == own->type_count());
}

TEST_CASE("BTF refuses a shared copy that is not its bytes", "[btf]") {
  BuiltBtf built = build_kinds();
  auto types = BtfTypes::parse(built.bytes);
  std::vector<std::uint8_t> other(built.bytes.begin(), built.bytes.end());
  other.back() ^= 1;
  auto keeper = std::make_shared<int>(0);
  CHECK_FALSE(types->share(other, keeper));
  std::vector<std::uint8_t> shorter(built.bytes.begin(), built.bytes.end() - 1);
  CHECK_FALSE(types->share(shorter, keeper));
  std::vector<std::uint8_t> same(built.bytes.begin(), built.bytes.end());
  CHECK_FALSE(types->share(same, nullptr));  // nothing would keep it mapped
  CHECK_FALSE(types->shared());
  CHECK(types->struct_size("outer") == 160u);
}
