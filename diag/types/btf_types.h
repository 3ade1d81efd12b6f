// TypeInfo from BTF (the kernel's /sys/kernel/btf/vmlinux, and split BTF of modules), parsed
// and validated by libbpf.
#pragma once

#include "types/type_info.h"

#include <map>
#include <memory>
#include <string>

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
  struct btf* btf_ = nullptr;
};

}  // namespace immortal
