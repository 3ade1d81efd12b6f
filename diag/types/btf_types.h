// TypeInfo from BTF (the kernel's /sys/kernel/btf/vmlinux, and split BTF of modules), parsed
// and validated by libbpf. Lookups by name are indexed and remembered: libbpf finds a type by
// name with a scan of every type (≈ 100 k in a distribution kernel), which made the readers'
// offset lookups a quarter of a crash's analysis; an analysis asks the same few hundred again.
#pragma once

#include "types/type_info.h"

#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>

struct btf;

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

 private:
  BtfTypes() = default;
  // The first struct (else union) of each name, as btf__find_by_name_kind would find it.
  std::int32_t composite(const std::string& name) const;
  std::optional<FieldInfo> find_field(const std::string& struct_name, const std::string& path) const;
  std::optional<std::int64_t> find_enumerator(const std::string& name) const;
  struct btf* btf_ = nullptr;
  std::unordered_map<std::string, std::int32_t> structs_, unions_;
  // Answers given (fields by "struct\0path", enumerators by name): asked from several threads
  // (the repair VM checks code beside the analysis), bounded in size.
  mutable std::mutex memo_mutex_;
  mutable std::unordered_map<std::string, std::optional<FieldInfo>> fields_;
  mutable std::unordered_map<std::string, std::optional<std::int64_t>> enumerators_;
};

}  // namespace immortal
