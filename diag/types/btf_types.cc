#include "types/btf_types.h"

#include "base/budgets.h"
#include "base/error.h"

#include <bpf/btf.h>

#include <sys/mman.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <optional>
#include <unordered_set>

namespace immortal {

FieldInfo TypeInfo::require_field(const std::string& struct_name, const std::string& path) const {
  auto f = field(struct_name, path);
  if (!f) fail(ExitCode::bad_input, "the kernel's types have no field {}.{}", struct_name, path);
  return *f;
}

std::uint64_t TypeInfo::require_size(const std::string& struct_name) const {
  auto s = struct_size(struct_name);
  if (!s) fail(ExitCode::bad_input, "the kernel's types have no struct {}", struct_name);
  return *s;
}

namespace {

// Follows typedefs and qualifiers to the underlying type id (bounded against cycles).
__u32 skip_modifiers(const struct btf* b, __u32 id) {
  for (int i = 0; i < 32; ++i) {
    const btf_type* t = btf__type_by_id(b, id);
    if (!t) return 0;
    if (!btf_is_typedef(t) && !btf_is_const(t) && !btf_is_volatile(t) && !btf_is_restrict(t) && !btf_is_type_tag(t))
      return id;
    id = t->type;
  }
  return 0;
}

struct Member {
  FieldInfo info;
  __u32 type = 0;  // the member's own type id
};

// Finds member `name` in composite type `id`, descending into anonymous members. Each anonymous
// type is searched once (a BTF may embed one in itself many times: without the `seen` set that
// costs fan-out^depth), within budget::kMemberVisits members in all.
struct MemberSearch {
  const struct btf* b;
  const std::string& name;
  std::unordered_set<__u32> seen;
  std::size_t visits = 0;

  std::optional<Member> find(__u32 id, int depth) {
    if (depth > budget::kMemberDepth || !seen.insert(id).second) return std::nullopt;
    const btf_type* t = btf__type_by_id(b, id);
    if (!t || !btf_is_composite(t)) return std::nullopt;
    const btf_member* m = btf_members(t);
    for (__u16 i = 0; i < btf_vlen(t); ++i, ++m) {
      if (++visits > budget::kMemberVisits)
        fail(ExitCode::bad_input, "implausible BTF: looking up member {} visits more than {} members", name,
             budget::kMemberVisits);
      const char* mname = btf__name_by_offset(b, m->name_off);
      std::uint64_t bit = btf_member_bit_offset(t, i);
      if (mname && *mname) {
        if (name == mname) {
          __s64 size = btf__resolve_size(b, m->type);
          return Member{{bit, btf_member_bitfield_size(t, i), size > 0 ? static_cast<std::uint64_t>(size) : 0}, m->type};
        }
      } else if (auto inner = find(skip_modifiers(b, m->type), depth + 1)) {
        inner->info.bit_offset += bit;
        return inner;
      }
    }
    return std::nullopt;
  }
};

std::optional<Member> find_member(const struct btf* b, __u32 id, const std::string& name) {
  return MemberSearch{b, name, {}, 0}.find(id, 0);
}

// Distinct questions remembered at most (the readers ask a few hundred; anything beyond is a
// caller asking names it got from elsewhere, answered without being kept).
constexpr std::size_t kMemoLimit = 8192;

// The answer memo holds for key, else compute()'s, kept while the memo is within its bound. A
// computation that throws (a hostile BTF beyond a budget) is not remembered.
template <typename Memo, typename Compute>
typename Memo::mapped_type remembered(std::mutex& mutex, Memo& memo, std::string key, Compute&& compute) {
  {
    std::lock_guard lock(mutex);
    if (auto it = memo.find(key); it != memo.end()) return it->second;
  }
  typename Memo::mapped_type found = compute();
  std::lock_guard lock(mutex);
  if (memo.size() < kMemoLimit) memo.emplace(std::move(key), found);
  return found;
}

}  // namespace

std::int32_t BtfTypes::composite(const std::string& name) const {
  if (auto it = structs_.find(name); it != structs_.end()) return it->second;
  if (auto it = unions_.find(name); it != unions_.end()) return it->second;
  return -1;
}

std::unique_ptr<BtfTypes> BtfTypes::parse(const std::string& raw) {
  if (raw.empty() || raw.size() > (256u << 20)) fail(ExitCode::bad_input, "BTF data is empty or too large");
  std::unique_ptr<BtfTypes> types(new BtfTypes);
  types->btf_ = btf__new(raw.data(), static_cast<__u32>(raw.size()));
  if (!types->btf_) fail(ExitCode::bad_input, "the kernel's BTF is malformed ({})", std::strerror(errno));
  for (__u32 id = 1; id < btf__type_cnt(types->btf_); ++id) {
    const btf_type* t = btf__type_by_id(types->btf_, id);
    if (!t || !(btf_is_struct(t) || btf_is_union(t))) continue;
    const char* name = btf__name_by_offset(types->btf_, t->name_off);
    if (!name || !*name) continue;
    (btf_is_struct(t) ? types->structs_ : types->unions_).emplace(name, static_cast<std::int32_t>(id));  // the first stays
  }
  return types;
}

BtfTypes::~BtfTypes() {
  if (btf_) btf__free(btf_);
}

std::size_t BtfTypes::type_count() const { return btf__type_cnt(btf_); }

const char* to_string(ReturnType type) {
  switch (type) {
    case ReturnType::unknown: return "unknown";
    case ReturnType::none: return "void";
    case ReturnType::signed_integer: return "signed integer";
    case ReturnType::unsigned_integer: return "unsigned integer";
    case ReturnType::boolean: return "bool";
    case ReturnType::pointer: return "pointer";
    case ReturnType::irqreturn: return "irqreturn_t";
    case ReturnType::enumeration: return "enum";
  }
  return "?";
}

namespace {

ReturnType classify_return(const struct btf* b, __u32 func_id) {
  const btf_type* func = btf__type_by_id(b, func_id);
  const btf_type* proto = func ? btf__type_by_id(b, func->type) : nullptr;
  if (!proto || !btf_is_func_proto(proto)) return ReturnType::unknown;
  __u32 ret = proto->type;
  if (ret == 0) return ReturnType::none;
  // irqreturn_t is a typedef of enum irqreturn: recognised by name before typedefs are skipped.
  for (int i = 0; i < 32; ++i) {
    const btf_type* t = btf__type_by_id(b, ret);
    if (!t) return ReturnType::unknown;
    const char* name = btf__name_by_offset(b, t->name_off);
    if (name && (std::strcmp(name, "irqreturn_t") == 0 || std::strcmp(name, "irqreturn") == 0)) return ReturnType::irqreturn;
    if (!btf_is_typedef(t) && !btf_is_const(t) && !btf_is_volatile(t) && !btf_is_restrict(t) && !btf_is_type_tag(t)) {
      if (btf_is_ptr(t)) return ReturnType::pointer;
      if (btf_is_int(t))
        return (btf_int_encoding(t) & BTF_INT_BOOL) ? ReturnType::boolean
               : (btf_int_encoding(t) & BTF_INT_SIGNED) ? ReturnType::signed_integer : ReturnType::unsigned_integer;
      if (btf_is_enum(t) || btf_is_enum64(t)) return ReturnType::enumeration;
      return ReturnType::unknown;
    }
    ret = t->type;
  }
  return ReturnType::unknown;
}

}  // namespace

std::map<std::string, ReturnType> BtfTypes::function_returns(const std::string& split_raw) const {
  std::map<std::string, ReturnType> out;
  if (split_raw.empty() || split_raw.size() > (64u << 20)) return out;
  // libbpf (1.1) parses split BTF only from a file: hand it the bytes through a memory file.
  int fd = ::memfd_create("immortal-btf", MFD_CLOEXEC);
  if (fd < 0) return out;
  std::size_t done = 0;
  while (done < split_raw.size()) {
    ssize_t n = ::write(fd, split_raw.data() + done, split_raw.size() - done);
    if (n <= 0) break;
    done += static_cast<std::size_t>(n);
  }
  struct btf* split = nullptr;
  if (done == split_raw.size()) split = btf__parse_raw_split(("/proc/self/fd/" + std::to_string(fd)).c_str(), btf_);
  ::close(fd);
  if (!split) return out;
  for (__u32 id = btf__type_cnt(btf_); id < btf__type_cnt(split); ++id) {
    const btf_type* t = btf__type_by_id(split, id);
    if (!t || !btf_is_func(t)) continue;
    const char* name = btf__name_by_offset(split, t->name_off);
    if (name && *name) out.emplace(name, classify_return(split, id));
  }
  btf__free(split);
  return out;
}

std::optional<std::uint64_t> BtfTypes::struct_size(const std::string& name) const {
  __s32 id = composite(name);
  if (id < 0) return std::nullopt;
  __s64 size = btf__resolve_size(btf_, static_cast<__u32>(id));
  if (size < 0) return std::nullopt;
  return static_cast<std::uint64_t>(size);
}

std::optional<std::int64_t> BtfTypes::enumerator(const std::string& name) const {
  return remembered(memo_mutex_, enumerators_, name, [&] { return find_enumerator(name); });
}

std::optional<std::int64_t> BtfTypes::find_enumerator(const std::string& name) const {
  for (__u32 id = 1; id < btf__type_cnt(btf_); ++id) {
    const btf_type* t = btf__type_by_id(btf_, id);
    if (!t || !btf_is_enum(t)) continue;  // 32-bit enums: every enum the readers need
    const struct btf_enum* e = btf_enum(t);
    for (__u16 i = 0; i < btf_vlen(t); ++i, ++e) {
      const char* n = btf__name_by_offset(btf_, e->name_off);
      if (n && name == n) return static_cast<std::int64_t>(e->val);
    }
  }
  return std::nullopt;
}

std::optional<FieldInfo> BtfTypes::field(const std::string& struct_name, const std::string& path) const {
  std::string key = struct_name;
  key.push_back('\0');
  key += path;
  return remembered(memo_mutex_, fields_, std::move(key), [&] { return find_field(struct_name, path); });
}

std::optional<FieldInfo> BtfTypes::find_field(const std::string& struct_name, const std::string& path) const {
  __s32 id = composite(struct_name);
  if (id < 0) return std::nullopt;
  FieldInfo total{};
  __u32 current = static_cast<__u32>(id);
  std::size_t start = 0;
  for (;;) {
    auto dot = path.find('.', start);
    std::string part = path.substr(start, dot == std::string::npos ? std::string::npos : dot - start);
    auto m = find_member(btf_, current, part);
    if (!m) return std::nullopt;
    total.bit_offset += m->info.bit_offset;
    total.bit_size = m->info.bit_size;
    total.size = m->info.size;
    if (dot == std::string::npos) return total;
    current = skip_modifiers(btf_, m->type);
    start = dot + 1;
  }
}

}  // namespace immortal
