// Fuzz target: BTF from the guest. Guest root can forge /sys/kernel/btf/vmlinux (a bind mount),
// and the profile carries it to every reader. Input: a BTF blob, and optionally a NUL-separated
// tail used as a module's split BTF. After libbpf accepts it, every named struct and union is
// looked up — its size, each member, and each member's members as a dotted path — with the
// budgets of diag/base/budgets.h bounding the search whatever the types embed.
#include "base/error.h"
#include "types/btf_types.h"

#include <bpf/btf.h>

#include <cstdint>
#include <string>
#include <vector>

using namespace immortal;

namespace {
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
  if (!split.empty()) (void)types->function_returns(split);
  return 0;
}
