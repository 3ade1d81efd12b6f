// Kernel and module symbols from /proc/kallsyms text (the healthy-guest profile): address to
// "name+0xoff [module]" and name to address. Per-CPU symbols (small offsets into the per-CPU
// area, e.g. current_task) are kept apart from addresses. Two layers: the kernel image's symbols,
// relative to their base and shareable by every guest of the kernel (kernel/image_symbols.h), and
// this guest's own (its modules), with the image's base of this boot.
#pragma once

#include "kernel/image_symbols.h"

#include <algorithm>
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

namespace immortal {

// A symbol as a SymbolTable stores it: its name and module point into the table's own storage,
// where each string is preceded by its length and a kallsyms type letter. 24 bytes: a kernel has
// ≈ 95 k of them in every process that holds its profile (the supervisor, each repair agent);
// as two string_views and a char they were 48.
class StoredSymbol {
 public:
  std::uint64_t address = 0;
  std::string_view name() const { return stored(name_); }
  std::string_view module() const { return module_ ? stored(module_) : std::string_view(); }
  char type() const { return name_[-1]; }

 private:
  friend class SymbolTable;
  StoredSymbol(std::uint64_t a, const char* name, const char* module) : address(a), name_(name), module_(module) {}
  // A string as SymbolTable::Names::add keeps it: two bytes of length (little-endian) and the
  // type letter before it.
  static std::string_view stored(const char* at) {
    auto length = static_cast<std::size_t>(static_cast<unsigned char>(at[-3]) | static_cast<unsigned char>(at[-2]) << 8);
    return {at, length};
  }
  const char* name_;    // never null
  const char* module_;  // null for the kernel image
};

// A symbol as a SymbolTable hands it out: a value, not a pointer into the table, so that a table
// whose kernel symbols are shared by several guests (each with its own KASLR slide) can make it.
// Its name and module are views of the table's storage, valid as long as the table (until its
// modules are updated).
class Symbol {
 public:
  Symbol() = default;
  explicit Symbol(const StoredSymbol& s) : address(s.address), name_(s.name()), module_(s.module()), type_(s.type()) {}
  Symbol(std::uint64_t a, std::string_view name, std::string_view module, char type)
      : address(a), name_(name), module_(module), type_(type) {}
  std::uint64_t address = 0;
  std::string_view name() const { return name_; }
  std::string_view module() const { return module_; }  // "" for the kernel image
  char type() const { return type_; }                   // kallsyms type letter: t/T text, d/D data, ...

 private:
  std::string_view name_, module_;
  char type_ = '?';
};

// A symbol found outside the profile (a module's own symbol table in guest memory), before a
// table holds it.
struct FoundSymbol {
  std::uint64_t address = 0;
  char type = '?';
  std::string name;
  std::string module;
};

// kallsyms text without the lines of the kernel image's symbols that `image` holds, when it holds
// exactly those of this text with image_base as their base (the table from_kallsyms builds of the
// result with `image` then answers as the table of the whole text); nullopt when it does not.
std::optional<std::string> kallsyms_without_image(std::string_view text, const ImageSymbols& image, std::uint64_t image_base);

// A function's name without what the compiler appended to a copy or a part of it:
// "__mutex_lock.constprop.0" → "__mutex_lock", "foo.cold" → "foo".
std::string base_function_name(std::string_view name);
// The function a split-off cold part belongs to: "foo.constprop.0.cold" → "foo.constprop.0".
std::string cold_part_parent(std::string_view name);

class SymbolTable {
 public:
  static constexpr std::size_t kMaxSymbols = 4'000'000;
  SymbolTable() = default;
  // A copy holds its own names; a move keeps the symbols and names where they are.
  SymbolTable(const SymbolTable& other);
  SymbolTable& operator=(const SymbolTable& other);
  SymbolTable(SymbolTable&&) noexcept = default;  // the names' storage moves along, unmoved
  SymbolTable& operator=(SymbolTable&&) noexcept = default;
  // Parses kallsyms; malformed lines are skipped and counted. With `image` given, it is the
  // kernel image's layer, at image_base in this boot, and the text holds what kallsyms_without_image
  // left (the per-CPU variables, the modules, any image symbol the layer could not hold): a repair
  // payload's guest part, beside the host's file of the image's symbols.
  static SymbolTable from_kallsyms(const std::string& text, std::shared_ptr<const ImageSymbols> image = nullptr,
                                   std::uint64_t image_base = 0);

  std::optional<std::uint64_t> address_of(std::string_view name) const;
  // The per-CPU offset of a per-CPU variable (e.g. "current_task").
  std::optional<std::uint64_t> percpu_offset(const std::string& name) const;
  // A per-CPU variable known by another route than kallsyms (a field of a per-CPU struct).
  void add_percpu(const std::string& name, std::uint64_t offset) { percpu_.emplace(name, offset); }
  // The symbol at or below address, if address is plausibly inside it (before the next symbol).
  std::optional<Symbol> lookup(std::uint64_t address) const;
  // The address of name as defined by one module ("" = the kernel image): static functions of
  // different modules may share a name.
  std::optional<std::uint64_t> address_in(std::string_view name, std::string_view module) const;
  // The first symbol above s's address (so s's size is the distance), nullopt at the end.
  std::optional<Symbol> next_after(const Symbol& s) const;
  // "func+0x1a/0x40 [module]" or "0xffff..." when unknown.
  std::string describe(std::uint64_t address) const;
  // For a return address: the call is the instruction before it, which may end the function
  // (a call to a noreturn function), so look up address - 1, as the kernel's %pB does.
  std::string describe_return(std::uint64_t address) const;
  bool is_text(std::uint64_t address) const;

  // Module symbols as the guest has them now: the symbols of modules not in `live`, and of those
  // in `fresh`, are dropped; `fresh` ones are added (read from the modules' own symbol tables in
  // guest memory when the profile's are stale).
  void update_modules(const std::map<std::string, std::vector<FoundSymbol>, std::less<>>& fresh,
                      const std::set<std::string, std::less<>>& live);
  // Per module, the lowest and highest address of its code symbols (t/T), in one pass.
  std::map<std::string, std::pair<std::uint64_t, std::uint64_t>, std::less<>> module_text_bounds() const;

  std::size_t size() const { return sorted_.size() + (image_ ? image_->size() : 0); }
  std::size_t skipped_lines() const { return skipped_; }
  // The bytes of name storage held for modules (live names and those of symbols dropped since).
  std::size_t name_bytes() const { return names_.bytes(); }

  // The kernel image's layer (nullptr when kallsyms had none) and where this boot has it.
  const std::shared_ptr<const ImageSymbols>& image_symbols() const { return image_; }
  std::uint64_t image_base() const { return image_base_; }
  // Uses `shared` for the image's layer instead of this table's own, when it holds the same bytes
  // (the same kernel: another guest's, or a file of the host's); returns whether it did.
  bool share_image(std::shared_ptr<const ImageSymbols> shared);

 private:
  // Where the names live: blocks that never move (views of them survive a move of the table),
  // one copy of each module's name. A distribution kernel has ≈ 95 k symbols; as one
  // std::string each, with a node per name in a hash map, they took 15.5 MiB of every process
  // that holds a kernel's profile (the supervisor, each repair agent), 7 MiB this way.
  class Names {
   public:
    Names() = default;
    // A moved-from store starts empty: it must not write into blocks it handed over.
    Names(Names&& other) noexcept { *this = std::move(other); }
    Names& operator=(Names&& other) noexcept {
      if (this == &other) return *this;
      blocks_ = std::move(other.blocks_);
      modules_ = std::move(other.modules_);
      next_ = std::exchange(other.next_, nullptr);
      left_ = std::exchange(other.left_, 0);
      bytes_ = std::exchange(other.bytes_, 0);
      other.blocks_.clear();
      other.modules_.clear();
      return *this;
    }
    // text (at most kMaxName bytes: cut there), preceded by its length in two bytes and by
    // `type` in the byte before it (Symbol::stored reads them).
    static constexpr std::size_t kMaxName = 0xffff;
    static std::size_t stored_bytes(std::string_view text) { return std::min(text.size(), kMaxName) + 3; }
    const char* add(std::string_view text, char type);
    const char* module(std::string_view name);  // nullptr for ""; each module's name once
    std::size_t bytes() const { return bytes_; }
   private:
    std::vector<std::unique_ptr<char[]>> blocks_;
    std::size_t left_ = 0, bytes_ = 0;
    char* next_ = nullptr;
    std::vector<const char*> modules_;
  };

  std::string describe_at(std::uint64_t address, std::uint64_t lookup_address) const;
  Symbol image_symbol(std::size_t i) const;
  std::optional<std::size_t> find_name(std::string_view name) const;
  void index();
  void index_names();
  // Copies every name into fresh storage (a copy of the table; after updates left garbage); the
  // index is the caller's to rebuild.
  void restore_names();

  // The image's layer: shared, never written; its offsets are from image_base_.
  std::shared_ptr<const ImageSymbols> image_;
  std::uint64_t image_base_ = 0;
  // The rest: modules' symbols (and any of the image too far from its base).
  Names names_;
  std::vector<StoredSymbol> sorted_;  // by address
  // An open-addressing hash set of indices into sorted_, keyed by name (first definition wins);
  // rebuilt whenever sorted_ changes. kEmpty marks a free slot.
  static constexpr std::uint32_t kEmpty = 0xffffffff;
  std::vector<std::uint32_t> by_name_;
  std::unordered_map<std::string, std::uint64_t> percpu_;
  std::size_t skipped_ = 0;
};

}  // namespace immortal
