// TypeInfo from DWARF (libdw), for when a vmlinux with debug information is at hand (Debian's
// linux-image-<abi>-amd64-dbg). Also maps code addresses to source file:line. The file is an
// input like any other: a missing or malformed one is a clear error.
#pragma once

#include "types/type_info.h"

#include <map>
#include <memory>
#include <optional>
#include <string>

typedef struct Dwarf Dwarf;

namespace immortal {

class DwarfTypes final : public TypeInfo {
 public:
  // Throws Error(ExitCode::bad_input) when the file has no usable DWARF.
  static std::unique_ptr<DwarfTypes> open(const std::string& path);
  ~DwarfTypes() override;

  std::optional<std::uint64_t> struct_size(const std::string& name) const override;
  std::optional<FieldInfo> field(const std::string& struct_name, const std::string& path) const override;
  // "fs/read_write.c:584" for a link-time code address, if the line tables cover it.
  std::optional<std::string> source_line(std::uint64_t address) const;

 private:
  DwarfTypes() = default;
  void index() const;

  int fd_ = -1;
  Dwarf* dwarf_ = nullptr;
  mutable bool indexed_ = false;
  mutable std::map<std::string, std::uint64_t> composites_;  // name → DIE offset (first definition)
};

}  // namespace immortal
