// Synthetic guest kernels for unit tests and fuzz targets: RAM in a vector, page tables that
// map the kernel image, hand-written struct layouts and symbols. Everything the kernel readers
// see is under the test's control, including hostile contents.
#pragma once

#include "kernel/kernel.h"
#include "memory/physical_memory.h"
#include "types/type_info.h"

#include <cstring>
#include <map>
#include <memory>
#include <string>
#include <vector>

namespace immortal::test {

class VectorMemory final : public PhysicalMemory {
 public:
  explicit VectorMemory(std::size_t size) : bytes_(size), ranges_{{0, size}} {}
  const std::vector<PhysicalRange>& ranges() const override { return ranges_; }
  void read(std::uint64_t address, std::span<std::byte> out) const override {
    if (!ranges_[0].contains(address, out.size())) throw MemoryFault(address, out.size(), "outside test RAM");
    if (!out.empty()) std::memcpy(out.data(), bytes_.data() + address, out.size());
  }
  bool writable() const override { return true; }
  void write(std::uint64_t address, std::span<const std::byte> data) override {
    if (!ranges_[0].contains(address, data.size())) throw MemoryFault(address, data.size(), "outside test RAM");
    if (!data.empty()) std::memcpy(bytes_.data() + address, data.data(), data.size());  // empty spans may be null
  }
  template <typename T>
  void put(std::uint64_t address, const T& value) {
    write(address, std::as_bytes(std::span(&value, 1)));
  }
  void put_bytes(std::uint64_t address, const std::string& s) {
    write(address, std::as_bytes(std::span(s.data(), s.size())));
  }

 private:
  std::vector<std::byte> bytes_;
  std::vector<PhysicalRange> ranges_;
};

class FakeTypes final : public TypeInfo {
 public:
  // "struct.path" → byte offset (size 8 unless given), with optional bitfield.
  void add(const std::string& struct_name, const std::string& path, std::uint64_t offset, std::uint64_t size = 8,
           std::uint32_t bit_size = 0, std::uint32_t bit_shift = 0) {
    fields_[struct_name + "." + path] = FieldInfo{offset * 8 + bit_shift, bit_size, size};
  }
  void add_size(const std::string& struct_name, std::uint64_t size) { sizes_[struct_name] = size; }
  void add_enumerator(const std::string& name, std::int64_t value) { enumerators_[name] = value; }
  void remove(const std::string& struct_name, const std::string& path) { fields_.erase(struct_name + "." + path); }
  std::optional<std::int64_t> enumerator(const std::string& name) const override {
    auto it = enumerators_.find(name);
    return it == enumerators_.end() ? std::nullopt : std::optional(it->second);
  }
  std::optional<std::uint64_t> struct_size(const std::string& name) const override {
    auto it = sizes_.find(name);
    return it == sizes_.end() ? std::nullopt : std::optional(it->second);
  }
  std::optional<FieldInfo> field(const std::string& s, const std::string& path) const override {
    auto it = fields_.find(s + "." + path);
    return it == fields_.end() ? std::nullopt : std::optional(it->second);
  }

 private:
  std::map<std::string, FieldInfo> fields_;
  std::map<std::string, std::uint64_t> sizes_;
  std::map<std::string, std::int64_t> enumerators_;
};

// The synthetic kernel maps 0xffffffff80000000 + x to physical x with one 1 GiB page, through
// a 4-level table at physical 0x1000 (PML4) and 0x2000 (PDPT). Keep 0x0-0x2fff free.
inline constexpr std::uint64_t kKernelBase = 0xffffffff80000000ull;
void map_kernel_image(VectorMemory& memory);
inline std::uint64_t kva(std::uint64_t phys) { return kKernelBase + phys; }

// Layouts of the structs the readers use, as Linux 6.1 x86-64 has them (offsets are the
// test's own; only consistency matters).
std::unique_ptr<FakeTypes> linux_like_types();

}  // namespace immortal::test
