#include "types/btf_types.h"

#include "base/budgets.h"
#include "base/content_digest.h"
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

struct Member {
  FieldInfo info;
  __u32 type = 0;  // the member's own type id
};

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

bool is_modifier(const btf_type* t) {
  return btf_is_typedef(t) || btf_is_const(t) || btf_is_volatile(t) || btf_is_restrict(t) || btf_is_type_tag(t);
}

}  // namespace

const btf_type* BtfTypes::type_at(std::uint32_t id) const {
  if (id == 0 || id >= offsets_.size()) return nullptr;
  return reinterpret_cast<const btf_type*>(bytes_.data() + types_at_ + offsets_[id]);
}

const char* BtfTypes::string_at(std::uint32_t offset) const {
  // libbpf checked that the string section ends with a NUL: every offset inside it is a string.
  if (offset >= strings_len_) return nullptr;
  return reinterpret_cast<const char*>(bytes_.data() + strings_at_ + offset);
}

// libbpf's btf__resolve_size over the records where they lie: the size of a type after
// qualifiers, typedefs and arrays (of at most 2^32 - 1 bytes), negative when it has none.
std::int64_t BtfTypes::resolve_size(std::uint32_t id) const {
  std::uint64_t elements = 1;
  const btf_type* t = type_at(id);
  for (int depth = 0; depth < 32 && t; ++depth) {
    std::uint64_t size = 0;
    switch (btf_kind(t)) {
      case BTF_KIND_INT:
      case BTF_KIND_STRUCT:
      case BTF_KIND_UNION:
      case BTF_KIND_ENUM:
      case BTF_KIND_ENUM64:
      case BTF_KIND_DATASEC:
      case BTF_KIND_FLOAT: size = t->size; break;
      case BTF_KIND_PTR: size = pointer_size_; break;
      case BTF_KIND_TYPEDEF:
      case BTF_KIND_VOLATILE:
      case BTF_KIND_CONST:
      case BTF_KIND_RESTRICT:
      case BTF_KIND_VAR:
      case BTF_KIND_DECL_TAG:
      case BTF_KIND_TYPE_TAG: t = type_at(t->type); continue;
      case BTF_KIND_ARRAY: {
        const struct btf_array* array = btf_array(t);
        if (elements && array->nelems > UINT32_MAX / elements) return -1;
        elements *= array->nelems;
        t = type_at(array->type);
        continue;
      }
      default: return -1;
    }
    if (elements && size > UINT32_MAX / elements) return -1;
    return static_cast<std::int64_t>(elements * size);
  }
  return -1;
}

std::uint32_t BtfTypes::skip_modifiers(std::uint32_t id) const {
  for (int i = 0; i < 32; ++i) {
    const btf_type* t = type_at(id);
    if (!t) return 0;
    if (!is_modifier(t)) return id;
    id = t->type;
  }
  return 0;
}

// Finds member `name` in composite type `id`, descending into anonymous members. Each anonymous
// type is searched once (a BTF may embed one in itself many times: without the `seen` set that
// costs fan-out^depth), within budget::kMemberVisits members in all.
struct BtfTypes::MemberSearch {
  const BtfTypes& types;
  const std::string& name;
  std::unordered_set<__u32> seen;
  std::size_t visits = 0;

  std::optional<Member> find(__u32 id, int depth) {
    if (depth > budget::kMemberDepth || !seen.insert(id).second) return std::nullopt;
    const btf_type* t = types.type_at(id);
    if (!t || !btf_is_composite(t)) return std::nullopt;
    const btf_member* m = btf_members(t);
    for (__u16 i = 0; i < btf_vlen(t); ++i, ++m) {
      if (++visits > budget::kMemberVisits)
        fail(ExitCode::bad_input, "implausible BTF: looking up member {} visits more than {} members", name,
             budget::kMemberVisits);
      const char* mname = types.string_at(m->name_off);
      std::uint64_t bit = btf_member_bit_offset(t, i);
      if (mname && *mname) {
        if (name == mname) {
          std::int64_t size = types.resolve_size(m->type);
          return Member{{bit, btf_member_bitfield_size(t, i), size > 0 ? static_cast<std::uint64_t>(size) : 0}, m->type};
        }
      } else if (auto inner = find(types.skip_modifiers(m->type), depth + 1)) {
        inner->info.bit_offset += bit;
        return inner;
      }
    }
    return std::nullopt;
  }
};

std::int32_t BtfTypes::composite(const std::string& name) const {
  if (auto it = structs_.find(name); it != structs_.end()) return it->second;
  if (auto it = unions_.find(name); it != unions_.end()) return it->second;
  return -1;
}

std::unique_ptr<BtfTypes> BtfTypes::parse(const std::string& raw) {
  if (raw.empty() || raw.size() > (256u << 20)) fail(ExitCode::bad_input, "BTF data is empty or too large");
  std::unique_ptr<BtfTypes> types(new BtfTypes);
  struct btf* b = btf__new(raw.data(), static_cast<__u32>(raw.size()));
  types->btf_ = b;
  if (!b) fail(ExitCode::bad_input, "the kernel's BTF is malformed ({})", std::strerror(errno));
  // Where libbpf keeps the bytes it checked: read in place from here on. Byte-swapped BTF (of
  // another architecture) is copied by libbpf into a layout that is not its raw bytes: refused.
  if (btf__endianness(b) != BTF_LITTLE_ENDIAN)
    fail(ExitCode::bad_input, "the kernel's BTF is not little-endian, as an x86-64 kernel's is");
  __u32 size = 0;
  const auto* at = static_cast<const std::uint8_t*>(btf__raw_data(b, &size));
  if (!at || size < sizeof(btf_header)) fail(ExitCode::bad_input, "the kernel's BTF is malformed (no raw data)");
  types->bytes_ = {at, size};
  btf_header header;
  std::memcpy(&header, at, sizeof header);
  types->types_at_ = header.hdr_len + header.type_off;
  types->types_len_ = header.type_len;
  types->strings_at_ = header.hdr_len + header.str_off;
  types->strings_len_ = header.str_len;
  // libbpf's btf__resolve_size takes the host's pointer size when the BTF does not tell.
  std::size_t pointer_size = btf__pointer_size(b);
  types->pointer_size_ = pointer_size ? static_cast<std::uint32_t>(pointer_size) : sizeof(void*);
  __u32 count = btf__type_cnt(b);
  types->offsets_.assign(count, 0);
  for (__u32 id = 1; id < count; ++id) {
    const auto* t = reinterpret_cast<const std::uint8_t*>(btf__type_by_id(b, id));
    if (!t || t < at + types->types_at_ || t >= at + types->types_at_ + types->types_len_)
      fail(ExitCode::bad_input, "the kernel's BTF is malformed (type {} outside its section)", id);
    types->offsets_[id] = static_cast<std::uint32_t>(t - (at + types->types_at_));
  }
  for (__u32 id = 1; id < count; ++id) {
    const btf_type* t = types->type_at(id);
    if (!(btf_is_struct(t) || btf_is_union(t))) continue;
    const char* name = types->string_at(t->name_off);
    if (!name || !*name) continue;
    (btf_is_struct(t) ? types->structs_ : types->unions_).emplace(name, static_cast<std::int32_t>(id));  // the first stays
  }
  return types;
}

const std::string& BtfTypes::digest() const {
  std::call_once(digest_once_, [this] {
    digest_ = content_digest(bytes_);
  });
  return digest_;
}

bool BtfTypes::share(std::span<const std::uint8_t> shared, std::shared_ptr<const void> keeper) {
  if (!keeper || shared.size() < bytes_.size() || std::memcmp(shared.data(), bytes_.data(), bytes_.size()) != 0)
    return false;
  bytes_ = shared.first(bytes_.size());
  keeper_ = std::move(keeper);
  if (btf_) btf__free(btf_);
  btf_ = nullptr;
  return true;
}

BtfTypes::~BtfTypes() {
  if (btf_) btf__free(btf_);
}

std::size_t BtfTypes::type_count() const { return offsets_.size(); }

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
    if (!is_modifier(t)) {
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
  // libbpf's split BTF needs its base parsed by libbpf: once the bytes are shared that parse is
  // gone, and made again for as long as this takes (modules' returns are read at load).
  struct btf* transient = btf_ ? nullptr : btf__new(bytes_.data(), static_cast<__u32>(bytes_.size()));
  struct btf* base = btf_ ? btf_ : transient;
  struct btf* split = nullptr;
  if (base && done == split_raw.size()) split = btf__parse_raw_split(("/proc/self/fd/" + std::to_string(fd)).c_str(), base);
  ::close(fd);
  if (!split) {
    if (transient) btf__free(transient);
    return out;
  }
  for (__u32 id = btf__type_cnt(base); id < btf__type_cnt(split); ++id) {
    const btf_type* t = btf__type_by_id(split, id);
    if (!t || !btf_is_func(t)) continue;
    const char* name = btf__name_by_offset(split, t->name_off);
    if (name && *name) out.emplace(name, classify_return(split, id));
  }
  btf__free(split);
  if (transient) btf__free(transient);
  return out;
}

std::optional<std::uint64_t> BtfTypes::struct_size(const std::string& name) const {
  __s32 id = composite(name);
  if (id < 0) return std::nullopt;
  std::int64_t size = resolve_size(static_cast<std::uint32_t>(id));
  if (size < 0) return std::nullopt;
  return static_cast<std::uint64_t>(size);
}

std::optional<std::int64_t> BtfTypes::enumerator(const std::string& name) const {
  return remembered(memo_mutex_, enumerators_, name, [&] { return find_enumerator(name); });
}

std::optional<std::int64_t> BtfTypes::find_enumerator(const std::string& name) const {
  for (std::uint32_t id = 1; id < offsets_.size(); ++id) {
    const btf_type* t = type_at(id);
    if (!btf_is_enum(t)) continue;  // 32-bit enums: every enum the readers need
    const struct btf_enum* e = btf_enum(t);
    for (__u16 i = 0; i < btf_vlen(t); ++i, ++e) {
      const char* n = string_at(e->name_off);
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
    auto m = MemberSearch{*this, part, {}, 0}.find(current, 0);
    if (!m) return std::nullopt;
    total.bit_offset += m->info.bit_offset;
    total.bit_size = m->info.bit_size;
    total.size = m->info.size;
    if (dot == std::string::npos) return total;
    current = skip_modifiers(m->type);
    start = dot + 1;
  }
}

}  // namespace immortal
