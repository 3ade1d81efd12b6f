// Kernel and module symbols from /proc/kallsyms text (the healthy-guest profile): address to
// "name+0xoff [module]" and name to address. Per-CPU symbols (small offsets into the per-CPU
// area, e.g. current_task) are kept apart from addresses.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

namespace immortal {

struct Symbol {
  std::uint64_t address = 0;
  char type = '?';      // kallsyms type letter: t/T text, d/D data, ...
  std::string name;
  std::string module;   // empty for the kernel image
};

class SymbolTable {
 public:
  static constexpr std::size_t kMaxSymbols = 4'000'000;
  SymbolTable() = default;
  // A copy indexes its own symbols' names; a move keeps the symbols where they are.
  SymbolTable(const SymbolTable& other);
  SymbolTable& operator=(const SymbolTable& other);
  SymbolTable(SymbolTable&&) noexcept = default;
  SymbolTable& operator=(SymbolTable&&) noexcept = default;
  // Parses kallsyms; malformed lines are skipped and counted.
  static SymbolTable from_kallsyms(const std::string& text);

  std::optional<std::uint64_t> address_of(const std::string& name) const;
  // The per-CPU offset of a per-CPU variable (e.g. "current_task").
  std::optional<std::uint64_t> percpu_offset(const std::string& name) const;
  // A per-CPU variable known by another route than kallsyms (a field of a per-CPU struct).
  void add_percpu(const std::string& name, std::uint64_t offset) { percpu_.emplace(name, offset); }
  // The symbol at or below address, if address is plausibly inside it (before the next symbol).
  const Symbol* lookup(std::uint64_t address) const;
  // The address of name as defined by one module ("" = the kernel image): static functions of
  // different modules may share a name.
  std::optional<std::uint64_t> address_in(const std::string& name, const std::string& module) const;
  // The first symbol above s's address (so s's size is the distance), nullptr at the end.
  const Symbol* next_after(const Symbol& s) const;
  // "func+0x1a/0x40 [module]" or "0xffff..." when unknown.
  std::string describe(std::uint64_t address) const;
  // For a return address: the call is the instruction before it, which may end the function
  // (a call to a noreturn function), so look up address - 1, as the kernel's %pB does.
  std::string describe_return(std::uint64_t address) const;
  bool is_text(std::uint64_t address) const;

  // Module symbols as the guest has them now: the symbols of modules not in `live`, and of those
  // in `fresh`, are dropped; `fresh` ones are added (read from the modules' own symbol tables in
  // guest memory when the profile's are stale).
  void update_modules(const std::map<std::string, std::vector<Symbol>>& fresh, const std::set<std::string>& live);
  // Per module, the lowest and highest address of its code symbols (t/T), in one pass.
  std::map<std::string, std::pair<std::uint64_t, std::uint64_t>> module_text_bounds() const;

  std::size_t size() const { return sorted_.size(); }
  std::size_t skipped_lines() const { return skipped_; }

 private:
  std::string describe_at(std::uint64_t address, std::uint64_t lookup_address) const;
  void index();
  void index_names();

  std::vector<Symbol> sorted_;  // by address
  // Views of sorted_'s names (no second copy of 95 k strings); rebuilt whenever sorted_ changes.
  std::unordered_map<std::string_view, std::size_t> by_name_;  // first definition wins
  std::unordered_map<std::string, std::uint64_t> percpu_;
  std::size_t skipped_ = 0;
};

}  // namespace immortal
