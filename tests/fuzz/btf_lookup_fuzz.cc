// Fuzz target: BTF from the guest. Guest root can forge /sys/kernel/btf/vmlinux (a bind mount),
// and the profile carries it to every reader. Input: a BTF blob, and optionally a NUL-separated
// tail used as a module's split BTF. After libbpf accepts it, every named struct and union is
// looked up — its size, each member, and each member's members as a dotted path — with the
// budgets of diag/base/budgets.h bounding the search whatever the types embed. The types are
// read in place (not through libbpf): each struct's size must be libbpf's btf__resolve_size, and
// the same types read from a shared copy of the bytes must answer the same.
#include "base/error.h"
#include "types/btf_types.h"

#include <bpf/btf.h>

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

using namespace immortal;

namespace {
// What f() returns, or nullopt when it throws (a lookup beyond its budget): both readers must agree.
template <typename F>
auto attempt(F&& f) -> std::optional<decltype(f())> {
  try {
    return f();
  } catch (const Error&) {
    return std::nullopt;
  }
}
constexpr std::size_t kSeparator = 8;  // "\0SPLIT\0\0" between the base and the split BTF
const char kSplit[kSeparator + 1] = "\0SPLIT\0\0";
}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  std::string input(reinterpret_cast<const char*>(data), size);
  std::string split;
  if (auto at = input.find(std::string(kSplit, kSeparator)); at != std::string::npos) {
    split = input.substr(at + kSeparator);
    input.resize(at);
  }
  std::unique_ptr<BtfTypes> types;
  try {
    types = BtfTypes::parse(input);
  } catch (const Error&) {
    return 0;
  }
  // The names to look up, from the same bytes (libbpf accepted them above).
  struct btf* raw = btf__new(input.data(), static_cast<__u32>(input.size()));
  if (!raw) return 0;
  std::vector<std::pair<std::string, std::vector<std::string>>> structs;
  std::vector<std::pair<std::string, __s64>> sizes;  // the first struct of a name: what BtfTypes answers for it
  std::vector<std::string> enumerators;
  __u32 count = btf__type_cnt(raw);
  for (__u32 id = 1; id < count && structs.size() < 64; ++id) {
    const struct btf_type* t = btf__type_by_id(raw, id);
    if (!t) continue;
    if (btf_is_composite(t)) {
      std::vector<std::string> members;
      const struct btf_member* m = btf_members(t);
      for (__u16 i = 0; i < btf_vlen(t) && members.size() < 16; ++i) {
        const char* name = btf__name_by_offset(raw, m[i].name_off);
        if (name && *name) members.emplace_back(name);
      }
      const char* name = btf__name_by_offset(raw, t->name_off);
      if (name && *name && btf_is_struct(t) && btf__find_by_name_kind(raw, name, BTF_KIND_STRUCT) == static_cast<__s32>(id))
        sizes.emplace_back(name, btf__resolve_size(raw, id));
      structs.emplace_back(name ? name : "", std::move(members));
    } else if (btf_is_enum(t) && btf_vlen(t) > 0) {
      const char* name = btf__name_by_offset(raw, btf_enum(t)[0].name_off);
      if (name) enumerators.emplace_back(name);
    }
  }
  btf__free(raw);
  for (const auto& [name, members] : structs) {
    (void)types->struct_size(name);
    for (const auto& m : members) {
      (void)types->field(name, m);
      for (const auto& inner : members) (void)types->field(name, m + "." + inner);
    }
    (void)types->field(name, "no_such_member");
  }
  for (const auto& e : enumerators) (void)types->enumerator(e);
  for (const auto& [name, expected] : sizes) {
    auto ours = types->struct_size(name);  // no member search: never beyond a budget
    if (ours.has_value() != (expected >= 0) || (ours && static_cast<__s64>(*ours) != expected)) __builtin_trap();
  }
  // Read from a copy instead (as from the host's shared file), the answers stay the same.
  auto copy = std::make_shared<std::vector<std::uint8_t>>(types->bytes().begin(), types->bytes().end());
  auto shared = BtfTypes::parse(input);
  if (!shared->share(*copy, copy)) __builtin_trap();
  for (const auto& entry : structs) {
    const std::string& name = entry.first;
    if (shared->struct_size(name) != types->struct_size(name)) __builtin_trap();
    for (const auto& m : entry.second) {
      auto a = attempt([&] { return shared->field(name, m); }), b = attempt([&] { return types->field(name, m); });
      if (a.has_value() != b.has_value()) __builtin_trap();
      if (a && (a->has_value() != b->has_value() ||
                (*a && ((*a)->bit_offset != (*b)->bit_offset || (*a)->size != (*b)->size))))
        __builtin_trap();
    }
  }
  if (!split.empty()) {
    if (types->function_returns(split) != shared->function_returns(split)) __builtin_trap();
  }
  return 0;
}
