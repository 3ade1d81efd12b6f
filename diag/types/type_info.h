// Struct layouts of the guest kernel, whatever describes them: BTF from the healthy-guest
// profile (btf_types.h) — and DWARF when a vmlinux with debuginfo is given (later). Every offset
// the kernel readers use comes from here, never from a constant.
#pragma once

#include <cstdint>
#include <optional>
#include <string>

namespace immortal {

struct FieldInfo {
  std::uint64_t bit_offset = 0;  // from the start of the outer struct
  std::uint32_t bit_size = 0;    // non-zero for a bitfield
  std::uint64_t size = 0;        // bytes of the field's type
  std::uint64_t byte_offset() const { return bit_offset / 8; }
};

class TypeInfo {
 public:
  virtual ~TypeInfo() = default;
  virtual std::optional<std::uint64_t> struct_size(const std::string& name) const = 0;
  // path: "pid", "tasks.next", "core_layout.base"; members of anonymous unions/structs are
  // found as if they were direct members, as in C.
  virtual std::optional<FieldInfo> field(const std::string& struct_name, const std::string& path) const = 0;
  // The value of a C enumerator (e.g. MOD_TEXT), where the description has enums.
  virtual std::optional<std::int64_t> enumerator(const std::string& name) const { (void)name; return std::nullopt; }

  // The same, throwing Error(ExitCode::bad_input) naming the missing piece.
  FieldInfo require_field(const std::string& struct_name, const std::string& path) const;
  std::uint64_t offset_of(const std::string& struct_name, const std::string& path) const {
    return require_field(struct_name, path).byte_offset();
  }
  std::uint64_t require_size(const std::string& struct_name) const;
};

}  // namespace immortal
