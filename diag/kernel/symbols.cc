#include "kernel/symbols.h"

#include "base/error.h"

#include <fmt/format.h>

#include <algorithm>
#include <string_view>

namespace immortal {

namespace {
constexpr std::uint64_t kMaxPercpuOffset = 1 << 24;
}  // namespace

SymbolTable SymbolTable::from_kallsyms(const std::string& text) {
  SymbolTable table;
  // One line per symbol: room for all of them at once (growing a vector of 95 k symbols moved
  // each one many times; a profile's kallsyms is bounded by the profile's file budget).
  table.sorted_.reserve(std::min<std::size_t>(static_cast<std::size_t>(std::count(text.begin(), text.end(), '\n')) + 1,
                                              kMaxSymbols));
  std::string_view rest(text);
  while (!rest.empty()) {
    auto nl = rest.find('\n');
    std::string_view line = rest.substr(0, nl);
    rest = nl == std::string_view::npos ? std::string_view() : rest.substr(nl + 1);
    // "ffffffff81000000 T _stext" or "ffffffffc0600000 t fn\t[module]"
    auto sp1 = line.find(' ');
    if (sp1 != 16 || line.size() < 20 || line[18] != ' ') {
      ++table.skipped_;
      continue;
    }
    std::uint64_t address = 0;
    bool ok = true;
    for (char c : line.substr(0, 16)) {
      int d = (c >= '0' && c <= '9') ? c - '0' : (c >= 'a' && c <= 'f') ? c - 'a' + 10 : -1;
      if (d < 0) ok = false;
      address = address << 4 | static_cast<std::uint64_t>(d < 0 ? 0 : d);
    }
    if (!ok) {
      ++table.skipped_;
      continue;
    }
    Symbol s;
    s.address = address;
    s.type = line[17];
    std::string_view name = line.substr(19);
    if (auto tab = name.find('\t'); tab != std::string_view::npos) {
      std::string_view module = name.substr(tab + 1);
      name = name.substr(0, tab);
      if (module.size() > 2 && module.front() == '[' && module.back() == ']') s.module = module.substr(1, module.size() - 2);
    }
    // Names are printable ASCII (they end up in reports and JSON): anything else is malformed.
    auto printable = [](std::string_view v) {
      return std::all_of(v.begin(), v.end(), [](char c) { return c > 0x20 && c < 0x7f; });
    };
    if (name.empty() || name.size() > 512 || !printable(name) || !printable(s.module)) {
      ++table.skipped_;
      continue;
    }
    s.name = name;
    // Per-CPU variables are listed as small offsets into the per-CPU area (x86-64 links them
    // at 0: fixed_percpu_data, current_task, ...), never as kernel addresses.
    if (s.module.empty() && s.address < kMaxPercpuOffset) {
      table.percpu_.emplace(s.name, s.address);
      continue;
    }
    if (table.sorted_.size() >= kMaxSymbols) fail(ExitCode::bad_input, "kallsyms has more than {} symbols", kMaxSymbols);
    table.sorted_.push_back(std::move(s));
  }
  table.index();
  return table;
}

void SymbolTable::index() {
  // kallsyms lists the kernel image in address order and then each module's symbols in its own
  // order: sort only what follows the sorted prefix and merge (both stable: the first of equal
  // addresses stays first).
  auto by_address = [](const Symbol& a, const Symbol& b) { return a.address < b.address; };
  auto tail = std::is_sorted_until(sorted_.begin(), sorted_.end(), by_address);
  if (tail != sorted_.end()) {
    std::stable_sort(tail, sorted_.end(), by_address);
    std::inplace_merge(sorted_.begin(), tail, sorted_.end(), by_address);
  }
  index_names();
}

void SymbolTable::index_names() {
  by_name_.clear();
  by_name_.reserve(sorted_.size());
  for (std::size_t i = 0; i < sorted_.size(); ++i) by_name_.emplace(sorted_[i].name, i);
}

SymbolTable::SymbolTable(const SymbolTable& other)
    : sorted_(other.sorted_), percpu_(other.percpu_), skipped_(other.skipped_) {
  index_names();  // the names' views must point into this table's own symbols
}

SymbolTable& SymbolTable::operator=(const SymbolTable& other) {
  if (this != &other) {
    sorted_ = other.sorted_;
    percpu_ = other.percpu_;
    skipped_ = other.skipped_;
    index_names();
  }
  return *this;
}

void SymbolTable::update_modules(const std::map<std::string, std::vector<Symbol>>& fresh, const std::set<std::string>& live) {
  std::erase_if(sorted_, [&](const Symbol& s) { return !s.module.empty() && (!live.count(s.module) || fresh.count(s.module)); });
  for (const auto& [module, symbols] : fresh)
    for (const auto& s : symbols)
      if (sorted_.size() < kMaxSymbols) sorted_.push_back(s);
  index();
}

std::map<std::string, std::pair<std::uint64_t, std::uint64_t>> SymbolTable::module_text_bounds() const {
  std::map<std::string, std::pair<std::uint64_t, std::uint64_t>> out;
  for (const auto& s : sorted_) {
    if (s.module.empty() || (s.type != 't' && s.type != 'T')) continue;
    auto [it, added] = out.try_emplace(s.module, s.address, s.address);
    if (!added) it->second = {std::min(it->second.first, s.address), std::max(it->second.second, s.address)};
  }
  return out;
}

std::optional<std::uint64_t> SymbolTable::address_of(const std::string& name) const {
  auto it = by_name_.find(name);
  if (it == by_name_.end()) return std::nullopt;
  return sorted_[it->second].address;
}

std::optional<std::uint64_t> SymbolTable::address_in(const std::string& name, const std::string& module) const {
  // Most names are defined once: the index answers; only a name the index gives to another
  // module (a static function several modules have) needs the scan.
  auto it = by_name_.find(name);
  if (it == by_name_.end()) return std::nullopt;  // no symbol of that name anywhere
  if (sorted_[it->second].module == module) return sorted_[it->second].address;
  for (const auto& s : sorted_)
    if (s.name == name && s.module == module) return s.address;
  return std::nullopt;
}

const Symbol* SymbolTable::next_after(const Symbol& s) const {
  auto next = std::upper_bound(sorted_.begin(), sorted_.end(), s.address,
                               [](std::uint64_t a, const Symbol& x) { return a < x.address; });
  return next == sorted_.end() ? nullptr : &*next;
}

std::optional<std::uint64_t> SymbolTable::percpu_offset(const std::string& name) const {
  auto it = percpu_.find(name);
  if (it == percpu_.end()) return std::nullopt;
  return it->second;
}

const Symbol* SymbolTable::lookup(std::uint64_t address) const {
  auto it = std::upper_bound(sorted_.begin(), sorted_.end(), address,
                             [](std::uint64_t a, const Symbol& s) { return a < s.address; });
  if (it == sorted_.begin()) return nullptr;
  const Symbol* s = &*(it - 1);
  // Past the last symbol or absurdly far from the nearest one: not a symbol address.
  if (it == sorted_.end() || address - s->address > (1 << 20)) return nullptr;
  return s;
}

std::string SymbolTable::describe(std::uint64_t address) const { return describe_at(address, address); }

std::string SymbolTable::describe_return(std::uint64_t address) const { return describe_at(address, address - 1); }

std::string SymbolTable::describe_at(std::uint64_t address, std::uint64_t lookup_address) const {
  const Symbol* s = lookup(lookup_address);
  if (!s) return fmt::format("{:#x}", address);
  auto next = std::upper_bound(sorted_.begin(), sorted_.end(), s->address,
                               [](std::uint64_t a, const Symbol& x) { return a < x.address; });
  std::uint64_t size = next == sorted_.end() ? 0 : next->address - s->address;
  std::string out = fmt::format("{}+{:#x}/{:#x}", s->name, address - s->address, size);
  if (!s->module.empty()) out += " [" + s->module + "]";
  return out;
}

bool SymbolTable::is_text(std::uint64_t address) const {
  const Symbol* s = lookup(address);
  return s && (s->type == 't' || s->type == 'T');
}

}  // namespace immortal
