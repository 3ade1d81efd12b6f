// The kernel image's symbols as one flat, read-only block, relative to the lowest of them: the
// part of a symbol table that is the same for every boot of one kernel build, whatever KASLR's
// slide. Guests of one kernel can therefore share one copy (a file every process of a host maps:
// the supervisors, the repair VMs) and add each guest's own base. Format: docs/formats.md,
// "Kernel image symbols".
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace immortal {

class ImageSymbols {
 public:
  // One symbol of the image as the builder is given it (its name is copied).
  struct Input {
    std::uint64_t address;
    std::string_view name;
    char type;
  };
  // What build() cannot place relative to the lowest address (more than 4 GiB above it) is left
  // out and returned to the caller's other table in `left_out` (indices into symbols).
  // symbols: in kallsyms order (the image's part is sorted by address; equal addresses keep their
  // order). Names are at most kMaxName bytes (cut there).
  static std::shared_ptr<const ImageSymbols> build(const std::vector<Input>& symbols, std::uint64_t& base,
                                                   std::vector<std::size_t>& left_out);
  // A block made by build(), from elsewhere (a shared file, a repair VM's window, which may be
  // longer: its header says where the block ends): checked whole before use (nullptr and `why`
  // when it is not one), kept alive by `keeper`.
  static std::shared_ptr<const ImageSymbols> view(std::span<const std::uint8_t> bytes,
                                                  std::shared_ptr<const void> keeper, std::string* why = nullptr);

  static constexpr std::size_t kMaxName = 0xffff;
  static constexpr std::uint32_t kVersion = 1;

  // A symbol of the block: its offset from the base, its name and kallsyms type letter.
  struct Entry {
    std::uint32_t offset;
    std::string_view name;
    char type;
  };
  std::size_t size() const { return count_; }
  Entry at(std::size_t i) const;
  // The last symbol at or below offset (nullopt when none is), and the first above it.
  std::optional<std::size_t> at_or_below(std::uint64_t offset) const;
  std::optional<std::size_t> above(std::uint64_t offset) const;
  // The first symbol (in address order) of that name.
  std::optional<std::size_t> find(std::string_view name) const;

  // The block, and a digest of it that names it (hex, 32 characters): equal blocks are one kernel.
  // Hashed once, when first asked for (the supervisor names and opens the host's file by it).
  std::span<const std::uint8_t> bytes() const { return bytes_; }
  const std::string& digest() const;

  ImageSymbols(const ImageSymbols&) = delete;
  ImageSymbols& operator=(const ImageSymbols&) = delete;

 private:
  ImageSymbols() = default;
  std::span<const std::uint8_t> bytes_;
  std::shared_ptr<const void> keeper_;  // whatever holds bytes_
  const std::uint8_t* entries_ = nullptr;  // count_ × {u32 offset, u32 name}
  const std::uint8_t* slots_ = nullptr;    // slot_count_ × u32 (indices; kEmpty free)
  const char* names_ = nullptr;
  std::size_t count_ = 0, slot_count_ = 0, names_bytes_ = 0;
  mutable std::once_flag digest_once_;
  mutable std::string digest_;
  std::uint32_t offset_of(std::size_t i) const;
  std::uint32_t name_of(std::size_t i) const;
};

// FNV-1a of a name: the block's hash slots are keyed by it (stable across processes and builds,
// as a file shared by several programs needs).
std::uint64_t symbol_name_hash(std::string_view name);

}  // namespace immortal
