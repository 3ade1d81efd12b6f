// TypeInfo from BTF (the kernel's /sys/kernel/btf/vmlinux, and split BTF of modules), parsed
// and validated by libbpf. Lookups by name are indexed and remembered: libbpf finds a type by
// name with a scan of every type (≈ 100 k in a distribution kernel), which made the readers'
// offset lookups a quarter of a crash's analysis; an analysis asks the same few hundred again.
// The types are read where the raw BTF lies (libbpf's copy, or once shared a file every guest
// of the kernel maps: vmm/repair/shared_kernel_files.h), so that libbpf's 5 MiB copy need not
// stay in every supervisor and repair agent (issue 20).
#pragma once

#include "types/type_info.h"

#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <unordered_map>
#include <vector>

struct btf;
struct btf_type;

namespace immortal {

// What a function returns, as a caller of it expects a value back (BTF FUNC_PROTO).
enum class ReturnType { unknown, none, signed_integer, unsigned_integer, boolean, pointer, irqreturn, enumeration };
const char* to_string(ReturnType type);

class BtfTypes final : public TypeInfo {
 public:
  // Throws Error(ExitCode::bad_input) when libbpf refuses the data.
  static std::unique_ptr<BtfTypes> parse(const std::string& raw);
  ~BtfTypes() override;

  std::optional<std::uint64_t> struct_size(const std::string& name) const override;
  std::optional<FieldInfo> field(const std::string& struct_name, const std::string& path) const override;
  std::optional<std::int64_t> enumerator(const std::string& name) const override;
  std::size_t type_count() const;
  // What each function of split BTF over these types (a module's BTF, as
  // /sys/kernel/btf/<module> has it) returns; empty when it cannot be parsed.
  std::map<std::string, ReturnType> function_returns(const std::string& split_raw) const;

  // The raw BTF the types are read from, and its digest (XXH3-128, hex; hashed once): equal
  // digests are one kernel's types.
  std::span<const std::uint8_t> bytes() const { return bytes_; }
  const std::string& digest() const;
  // Reads the types from `shared` (which may be longer) instead of its own copy when it starts
  // with the same bytes, and frees that copy; `keeper` keeps `shared` mapped. false, and nothing
  // changed, when the bytes differ. Before the types are read by other threads.
  bool share(std::span<const std::uint8_t> shared, std::shared_ptr<const void> keeper);
  bool shared() const { return keeper_ != nullptr; }
  // What keeps the shared bytes mapped (nullptr while they are libbpf's copy).
  const std::shared_ptr<const void>& keeper() const { return keeper_; }

 private:
  struct MemberSearch;
  BtfTypes() = default;
  // The BTF's own records, as libbpf's btf__type_by_id, btf__name_by_offset and
  // btf__resolve_size read them (nullptr, nullptr and a negative size where those fail).
  const btf_type* type_at(std::uint32_t id) const;
  const char* string_at(std::uint32_t offset) const;
  std::int64_t resolve_size(std::uint32_t id) const;
  // Follows typedefs and qualifiers to the underlying type id (bounded against cycles; 0 if none).
  std::uint32_t skip_modifiers(std::uint32_t id) const;
  // The first struct (else union) of each name, as btf__find_by_name_kind would find it.
  std::int32_t composite(const std::string& name) const;
  std::optional<FieldInfo> find_field(const std::string& struct_name, const std::string& path) const;
  std::optional<std::int64_t> find_enumerator(const std::string& name) const;
  // libbpf's parse, which validated the bytes: it owns them until they are shared, then goes.
  struct btf* btf_ = nullptr;
  std::span<const std::uint8_t> bytes_;
  std::shared_ptr<const void> keeper_;  // the shared bytes' mapping
  std::uint32_t types_at_ = 0, types_len_ = 0, strings_at_ = 0, strings_len_ = 0;  // within bytes_
  std::vector<std::uint32_t> offsets_;  // each type's record from types_at_ (by id; id 0 is void)
  std::uint32_t pointer_size_ = 8;
  mutable std::once_flag digest_once_;
  mutable std::string digest_;
  std::unordered_map<std::string, std::int32_t> structs_, unions_;
  // Answers given (fields by "struct\0path", enumerators by name): asked from several threads
  // (the repair VM checks code beside the analysis), bounded in size.
  mutable std::mutex memo_mutex_;
  mutable std::unordered_map<std::string, std::optional<FieldInfo>> fields_;
  mutable std::unordered_map<std::string, std::optional<std::int64_t>> enumerators_;
};

}  // namespace immortal
