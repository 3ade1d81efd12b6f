#include "kernel/symbols.h"

#include "base/error.h"

#include <fmt/format.h>

#include <algorithm>
#include <optional>
#include <string_view>

namespace immortal {

namespace {
constexpr std::uint64_t kMaxPercpuOffset = 1 << 24;
constexpr std::size_t kNameBlock = 256 * 1024;
}  // namespace

std::string base_function_name(std::string_view name) { return std::string(name.substr(0, name.find('.'))); }

std::string cold_part_parent(std::string_view name) { return std::string(name.substr(0, name.find(".cold"))); }

const char* SymbolTable::Names::add(std::string_view text, char type) {
  std::size_t need = stored_bytes(text);
  text = text.substr(0, kMaxName);
  if (need > left_) {
    std::size_t size = std::max(kNameBlock, need);
    blocks_.push_back(std::make_unique<char[]>(size));
    next_ = blocks_.back().get();
    left_ = size;
  }
  next_[0] = static_cast<char>(text.size() & 0xff);
  next_[1] = static_cast<char>(text.size() >> 8);
  next_[2] = type;
  char* kept = next_ + 3;
  std::copy(text.begin(), text.end(), kept);
  next_ += need;
  left_ -= need;
  bytes_ += need;
  return kept;
}

const char* SymbolTable::Names::module(std::string_view name) {
  if (name.empty()) return nullptr;
  name = name.substr(0, kMaxName);  // as add() keeps it: a long name still matches its stored copy
  // kallsyms lists a module's symbols together: the last one asked for is the likely answer.
  for (auto it = modules_.rbegin(); it != modules_.rend(); ++it)
    if (StoredSymbol::stored(*it) == name) return *it;
  modules_.push_back(add(name, 0));
  return modules_.back();
}

namespace {

// One line of kallsyms, parsed: "ffffffff81000000 T _stext" or "ffffffffc0600000 t fn\t[module]".
struct KallsymsLine {
  std::uint64_t address = 0;
  char type = '?';
  std::string_view name, module;
};

// nullopt for a malformed line (skipped and counted by the callers).
std::optional<KallsymsLine> parse_kallsyms_line(std::string_view line) {
  auto sp1 = line.find(' ');
  if (sp1 != 16 || line.size() < 20 || line[18] != ' ') return std::nullopt;
  KallsymsLine out;
  for (char c : line.substr(0, 16)) {
    int d = (c >= '0' && c <= '9') ? c - '0' : (c >= 'a' && c <= 'f') ? c - 'a' + 10 : -1;
    if (d < 0) return std::nullopt;
    out.address = out.address << 4 | static_cast<std::uint64_t>(d);
  }
  out.type = line[17];
  out.name = line.substr(19);
  if (auto tab = out.name.find('\t'); tab != std::string_view::npos) {
    std::string_view bracketed = out.name.substr(tab + 1);
    out.name = out.name.substr(0, tab);
    if (bracketed.size() > 2 && bracketed.front() == '[' && bracketed.back() == ']')
      out.module = bracketed.substr(1, bracketed.size() - 2);
  }
  // Names are printable ASCII (they end up in reports and JSON): anything else is malformed.
  auto printable = [](std::string_view v) {
    return std::all_of(v.begin(), v.end(), [](char c) { return c > 0x20 && c < 0x7f; });
  };
  if (out.name.empty() || out.name.size() > 512 || !printable(out.name) || !printable(out.module)) return std::nullopt;
  return out;
}

// Per-CPU variables are listed as small offsets into the per-CPU area (x86-64 links them at 0:
// fixed_percpu_data, current_task, ...), never as kernel addresses.
bool percpu_line(const KallsymsLine& l) { return l.module.empty() && l.address < kMaxPercpuOffset; }

// Calls f(line, parsed) for each line of text (parsed is nullopt for a malformed one).
template <typename F>
void for_each_kallsyms_line(std::string_view text, F&& f) {
  while (!text.empty()) {
    auto nl = text.find('\n');
    std::string_view line = text.substr(0, nl);
    text = nl == std::string_view::npos ? std::string_view() : text.substr(nl + 1);
    f(line, parse_kallsyms_line(line));
  }
}

}  // namespace

SymbolTable SymbolTable::from_kallsyms(const std::string& text, std::shared_ptr<const ImageSymbols> image,
                                       std::uint64_t image_base) {
  SymbolTable table;
  // One line per symbol: room for all of them at once (growing a vector of 95 k symbols moved
  // each one many times; a profile's kallsyms is bounded by the profile's file budget).
  // Most of them are the image's, which go to its shareable layer (as views of the text until it
  // is built); the modules' few thousand go to the table. With the image's layer given, the
  // image's lines left in the text are those it could not hold (kallsyms_without_image).
  std::vector<ImageSymbols::Input> inputs;
  if (!image)
    inputs.reserve(std::min<std::size_t>(static_cast<std::size_t>(std::count(text.begin(), text.end(), '\n')) + 1,
                                         kMaxSymbols));
  const std::size_t given = image ? image->size() : 0;
  for_each_kallsyms_line(text, [&](std::string_view, const std::optional<KallsymsLine>& l) {
    if (!l) {
      ++table.skipped_;
      return;
    }
    if (percpu_line(*l)) {
      table.percpu_.emplace(std::string(l->name), l->address);
      return;
    }
    if (table.sorted_.size() + inputs.size() + given >= kMaxSymbols)
      fail(ExitCode::bad_input, "kallsyms has more than {} symbols", kMaxSymbols);
    if (l->module.empty()) inputs.push_back({l->address, l->name, l->type});
    else
      table.sorted_.push_back(StoredSymbol(l->address, table.names_.add(l->name, l->type), table.names_.module(l->module)));
  });
  // What the layer does not hold goes after the modules, in its order: equal addresses then
  // resolve the same whether the layer was built here or given.
  std::vector<std::size_t> left_out;
  if (image) {
    table.image_ = std::move(image);
    table.image_base_ = image_base;
    for (std::size_t i = 0; i < inputs.size(); ++i) left_out.push_back(i);
  } else {
    table.image_ = ImageSymbols::build(inputs, table.image_base_, left_out);
  }
  for (std::size_t i : left_out)
    table.sorted_.push_back(StoredSymbol(inputs[i].address, table.names_.add(inputs[i].name, inputs[i].type), nullptr));
  table.index();
  return table;
}

std::optional<std::string> kallsyms_without_image(std::string_view text, const ImageSymbols& image, std::uint64_t image_base) {
  // The image's lines as from_kallsyms gives them to ImageSymbols::build; each line of the text
  // with the index of its input there (-1 for the others), so that the text is parsed once.
  std::vector<ImageSymbols::Input> inputs;
  std::vector<std::pair<std::string_view, std::ptrdiff_t>> lines;
  for_each_kallsyms_line(text, [&](std::string_view line, const std::optional<KallsymsLine>& l) {
    std::ptrdiff_t input = -1;
    if (l && !percpu_line(*l) && l->module.empty()) {
      input = static_cast<std::ptrdiff_t>(inputs.size());
      inputs.push_back({l->address, l->name, l->type});
    }
    lines.emplace_back(line, input);
  });
  std::uint64_t base = 0;
  std::vector<std::size_t> left_out;
  auto built = ImageSymbols::build(inputs, base, left_out);
  auto mine = built ? built->bytes() : std::span<const std::uint8_t>(), theirs = image.bytes();
  if (!built || base != image_base || !std::equal(mine.begin(), mine.end(), theirs.begin(), theirs.end())) return std::nullopt;
  // Every line but those the block holds, in their order.
  std::vector<bool> in_block(inputs.size(), true);
  for (std::size_t i : left_out) in_block[i] = false;
  std::string out;
  for (const auto& [line, input] : lines) {
    if (input >= 0 && in_block[static_cast<std::size_t>(input)]) continue;
    out.append(line);
    out.push_back('\n');
  }
  return out;
}

void SymbolTable::index() {
  // kallsyms lists the kernel image in address order and then each module's symbols in its own
  // order: sort only what follows the sorted prefix and merge (both stable: the first of equal
  // addresses stays first).
  auto by_address = [](const StoredSymbol& a, const StoredSymbol& b) { return a.address < b.address; };
  auto tail = std::is_sorted_until(sorted_.begin(), sorted_.end(), by_address);
  if (tail != sorted_.end()) {
    std::stable_sort(tail, sorted_.end(), by_address);
    std::inplace_merge(sorted_.begin(), tail, sorted_.end(), by_address);
  }
  index_names();
}

void SymbolTable::index_names() {
  // At most half full: probes stay short. kMaxSymbols fits the 32-bit indices.
  std::size_t slots = 16;
  while (slots < 2 * sorted_.size()) slots <<= 1;
  by_name_.assign(slots, kEmpty);
  const std::size_t mask = slots - 1;
  for (std::size_t i = 0; i < sorted_.size(); ++i) {
    std::string_view name = sorted_[i].name();
    for (std::size_t at = std::hash<std::string_view>{}(name) & mask;; at = (at + 1) & mask) {
      if (by_name_[at] == kEmpty) {
        by_name_[at] = static_cast<std::uint32_t>(i);
        break;
      }
      if (sorted_[by_name_[at]].name() == name) break;  // the first definition stays
    }
  }
}

void SymbolTable::restore_names() {
  Names fresh;
  for (auto& s : sorted_) {
    s.name_ = fresh.add(s.name(), s.type());
    s.module_ = fresh.module(s.module());
  }
  names_ = std::move(fresh);
}

SymbolTable::SymbolTable(const SymbolTable& other)
    : image_(other.image_), image_base_(other.image_base_), sorted_(other.sorted_), percpu_(other.percpu_),
      skipped_(other.skipped_) {
  restore_names();  // the names must be this table's own
  index_names();
}

SymbolTable& SymbolTable::operator=(const SymbolTable& other) {
  if (this != &other) {
    image_ = other.image_;
    image_base_ = other.image_base_;
    sorted_ = other.sorted_;
    percpu_ = other.percpu_;
    skipped_ = other.skipped_;
    restore_names();
    index_names();
  }
  return *this;
}

void SymbolTable::update_modules(const std::map<std::string, std::vector<FoundSymbol>, std::less<>>& fresh,
                                 const std::set<std::string, std::less<>>& live) {
  std::erase_if(sorted_, [&](const StoredSymbol& s) {
    return s.module_ && (!live.count(s.module()) || fresh.count(s.module()));
  });
  std::size_t live_bytes = 0;
  for (const auto& s : sorted_) live_bytes += Names::stored_bytes(s.name());
  for (const auto& [module, symbols] : fresh)
    for (const auto& s : symbols)
      if (sorted_.size() < kMaxSymbols) {
        sorted_.push_back(StoredSymbol(s.address, names_.add(s.name, s.type), names_.module(s.module)));
        live_bytes += Names::stored_bytes(s.name);
      }
  // Dropped symbols leave their names behind: a guest that reloads modules again and again
  // must not grow the table without end.
  if (names_.bytes() > 2 * live_bytes + (1 << 20)) restore_names();
  index();
}

std::map<std::string, std::pair<std::uint64_t, std::uint64_t>, std::less<>> SymbolTable::module_text_bounds() const {
  std::map<std::string, std::pair<std::uint64_t, std::uint64_t>, std::less<>> out;
  for (const auto& s : sorted_) {
    if (s.module().empty() || (s.type() != 't' && s.type() != 'T')) continue;
    auto it = out.find(s.module());
    bool added = it == out.end();
    if (added) it = out.emplace(std::string(s.module()), std::pair{s.address, s.address}).first;
    if (!added) it->second = {std::min(it->second.first, s.address), std::max(it->second.second, s.address)};
  }
  return out;
}

std::optional<std::size_t> SymbolTable::find_name(std::string_view name) const {
  if (by_name_.empty()) return std::nullopt;
  const std::size_t mask = by_name_.size() - 1;
  for (std::size_t at = std::hash<std::string_view>{}(name) & mask;; at = (at + 1) & mask) {
    if (by_name_[at] == kEmpty) return std::nullopt;
    if (sorted_[by_name_[at]].name() == name) return by_name_[at];
  }
}

Symbol SymbolTable::image_symbol(std::size_t i) const {
  auto e = image_->at(i);
  return Symbol(image_base_ + e.offset, e.name, {}, e.type);
}

bool SymbolTable::share_image(std::shared_ptr<const ImageSymbols> shared) {
  if (!image_ || !shared || shared.get() == image_.get()) return false;
  auto mine = image_->bytes(), theirs = shared->bytes();
  if (!std::equal(mine.begin(), mine.end(), theirs.begin(), theirs.end())) return false;
  image_ = std::move(shared);
  return true;
}

std::optional<std::uint64_t> SymbolTable::address_of(std::string_view name) const {
  // The image's symbols come first in kallsyms: its definition wins, as it did in one table.
  if (image_)
    if (auto i = image_->find(name)) return image_base_ + image_->at(*i).offset;
  auto i = find_name(name);
  if (!i) return std::nullopt;
  return sorted_[*i].address;
}

std::optional<std::uint64_t> SymbolTable::address_in(std::string_view name, std::string_view module) const {
  if (module.empty() && image_)
    if (auto i = image_->find(name)) return image_base_ + image_->at(*i).offset;
  // Most names are defined once: the index answers; only a name the index gives to another
  // module (a static function several modules have) needs the scan.
  auto i = find_name(name);
  if (!i) return std::nullopt;  // no symbol of that name anywhere
  if (sorted_[*i].module() == module) return sorted_[*i].address;
  for (const auto& s : sorted_)
    if (s.name() == name && s.module() == module) return s.address;
  return std::nullopt;
}

std::optional<Symbol> SymbolTable::next_after(const Symbol& s) const {
  std::optional<Symbol> best;
  auto next = std::upper_bound(sorted_.begin(), sorted_.end(), s.address,
                               [](std::uint64_t a, const StoredSymbol& x) { return a < x.address; });
  if (next != sorted_.end()) best = Symbol(*next);
  if (image_) {
    // Above the image's base; below it every image symbol is above s.
    std::optional<std::size_t> i =
        s.address < image_base_ ? std::optional<std::size_t>(0) : image_->above(s.address - image_base_);
    if (i && (!best || image_base_ + image_->at(*i).offset < best->address)) best = image_symbol(*i);
  }
  return best;
}

std::optional<std::uint64_t> SymbolTable::percpu_offset(const std::string& name) const {
  auto it = percpu_.find(name);
  if (it == percpu_.end()) return std::nullopt;
  return it->second;
}

std::optional<Symbol> SymbolTable::lookup(std::uint64_t address) const {
  // The last symbol at or below address in either layer (the other layer's on a tie, as one
  // sorted table of the image and then the modules had it), provided some symbol lies above.
  std::optional<Symbol> best;
  bool any_above = false;
  auto it = std::upper_bound(sorted_.begin(), sorted_.end(), address,
                             [](std::uint64_t a, const StoredSymbol& s) { return a < s.address; });
  any_above = it != sorted_.end();
  if (it != sorted_.begin()) best = Symbol(*(it - 1));
  if (image_) {
    if (address < image_base_) {
      any_above = true;
    } else {
      // One search: the first image symbol above, and the one before it.
      auto next = image_->above(address - image_base_);
      if (next) any_above = true;
      std::size_t first_above = next ? *next : image_->size();
      if (first_above > 0 && (!best || image_base_ + image_->at(first_above - 1).offset > best->address))
        best = image_symbol(first_above - 1);
    }
  }
  // Past the last symbol or absurdly far from the nearest one: not a symbol address.
  if (!best || !any_above || address - best->address > (1 << 20)) return std::nullopt;
  return best;
}

std::string SymbolTable::describe(std::uint64_t address) const { return describe_at(address, address); }

std::string SymbolTable::describe_return(std::uint64_t address) const { return describe_at(address, address - 1); }

std::string SymbolTable::describe_at(std::uint64_t address, std::uint64_t lookup_address) const {
  auto s = lookup(lookup_address);
  if (!s) return fmt::format("{:#x}", address);
  auto next = next_after(*s);
  std::uint64_t size = next ? next->address - s->address : 0;
  std::string out = fmt::format("{}+{:#x}/{:#x}", s->name(), address - s->address, size);
  if (!s->module().empty()) out += fmt::format(" [{}]", s->module());
  return out;
}

bool SymbolTable::is_text(std::uint64_t address) const {
  auto s = lookup(address);
  return s && (s->type() == 't' || s->type() == 'T');
}

}  // namespace immortal
