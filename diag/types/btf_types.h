// TypeInfo from BTF (the kernel's /sys/kernel/btf/vmlinux, and split BTF of modules), parsed
// and validated by libbpf.
#pragma once

#include "types/type_info.h"

#include <memory>
#include <string>

struct btf;

namespace immortal {

class BtfTypes final : public TypeInfo {
 public:
  // Throws Error(ExitCode::bad_input) when libbpf refuses the data.
  static std::unique_ptr<BtfTypes> parse(const std::string& raw);
  ~BtfTypes() override;

  std::optional<std::uint64_t> struct_size(const std::string& name) const override;
  std::optional<FieldInfo> field(const std::string& struct_name, const std::string& path) const override;
  std::size_t type_count() const;

 private:
  BtfTypes() = default;
  struct btf* btf_ = nullptr;
};

}  // namespace immortal
