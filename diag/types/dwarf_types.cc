#include "types/dwarf_types.h"

#include "base/budgets.h"
#include "base/error.h"

#include <dwarf.h>
#include <elfutils/libdw.h>
#include <fcntl.h>
#include <unistd.h>

#include <cstring>
#include <unordered_set>

namespace immortal {

namespace {

// Follows typedefs and qualifiers (bounded).
bool underlying(Dwarf_Die* die, Dwarf_Die* out) {
  *out = *die;
  for (int i = 0; i < 32; ++i) {
    int tag = dwarf_tag(out);
    if (tag != DW_TAG_typedef && tag != DW_TAG_const_type && tag != DW_TAG_volatile_type && tag != DW_TAG_restrict_type)
      return true;
    Dwarf_Attribute attr;
    if (!dwarf_attr_integrate(out, DW_AT_type, &attr) || !dwarf_formref_die(&attr, out)) return false;
  }
  return false;
}

bool member_type(Dwarf_Die* member, Dwarf_Die* type) {
  Dwarf_Attribute attr;
  Dwarf_Die raw;
  return dwarf_attr_integrate(member, DW_AT_type, &attr) && dwarf_formref_die(&attr, &raw) && underlying(&raw, type);
}

struct Found {
  FieldInfo info;
  Dwarf_Die type;
};

// As btf_types.cc's: each anonymous type searched once, within budget::kMemberVisits members.
std::optional<Found> find_member(Dwarf_Die* composite, const std::string& name, int depth,
                                 std::unordered_set<Dwarf_Off>& seen, std::size_t& visits) {
  if (depth > budget::kMemberDepth || !seen.insert(dwarf_dieoffset(composite)).second) return std::nullopt;
  Dwarf_Die child;
  if (dwarf_child(composite, &child) != 0) return std::nullopt;
  do {
    if (dwarf_tag(&child) != DW_TAG_member) continue;
    if (++visits > budget::kMemberVisits)
      fail(ExitCode::bad_input, "implausible DWARF: looking up member {} visits more than {} members", name,
           budget::kMemberVisits);
    Dwarf_Word byte_offset = 0;
    Dwarf_Attribute attr;
    if (dwarf_attr_integrate(&child, DW_AT_data_member_location, &attr)) dwarf_formudata(&attr, &byte_offset);
    std::uint64_t bit_offset = byte_offset * 8;
    Dwarf_Word bit_size = 0, data_bit = 0;
    if (dwarf_attr_integrate(&child, DW_AT_bit_size, &attr)) dwarf_formudata(&attr, &bit_size);
    if (dwarf_attr_integrate(&child, DW_AT_data_bit_offset, &attr) && dwarf_formudata(&attr, &data_bit) == 0)
      bit_offset = data_bit;
    Dwarf_Die type;
    bool typed = member_type(&child, &type);
    const char* mname = dwarf_diename(&child);
    if (mname && name == mname) {
      Dwarf_Word size = 0;
      if (typed) {
        int tag = dwarf_tag(&type);
        if (tag == DW_TAG_structure_type || tag == DW_TAG_union_type || tag == DW_TAG_array_type) {
          dwarf_aggregate_size(&type, &size);
        } else if (dwarf_attr_integrate(&type, DW_AT_byte_size, &attr)) {
          dwarf_formudata(&attr, &size);
        }
      }
      return Found{{bit_offset, static_cast<std::uint32_t>(bit_size), size}, type};
    }
    if (!mname && typed) {
      if (auto inner = find_member(&type, name, depth + 1, seen, visits)) {
        inner->info.bit_offset += bit_offset;
        return inner;
      }
    }
  } while (dwarf_siblingof(&child, &child) == 0);
  return std::nullopt;
}

}  // namespace

std::unique_ptr<DwarfTypes> DwarfTypes::open(const std::string& path) {
  std::unique_ptr<DwarfTypes> t(new DwarfTypes);
  t->fd_ = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (t->fd_ < 0) fail(ExitCode::bad_input, "cannot open {}: {}", path, std::strerror(errno));
  t->dwarf_ = dwarf_begin(t->fd_, DWARF_C_READ);
  if (!t->dwarf_) fail(ExitCode::bad_input, "{} has no usable DWARF debug information ({})", path, dwarf_errmsg(-1));
  return t;
}

DwarfTypes::~DwarfTypes() {
  if (dwarf_) dwarf_end(dwarf_);
  if (fd_ >= 0) ::close(fd_);
}

void DwarfTypes::index() const {
  if (indexed_) return;
  indexed_ = true;
  Dwarf_Off offset = 0, next = 0;
  std::size_t header = 0;
  while (dwarf_nextcu(dwarf_, offset, &next, &header, nullptr, nullptr, nullptr) == 0) {
    Dwarf_Die cu, child;
    if (dwarf_offdie(dwarf_, offset + header, &cu) && dwarf_child(&cu, &child) == 0) {
      do {
        int tag = dwarf_tag(&child);
        if (tag != DW_TAG_structure_type && tag != DW_TAG_union_type) continue;
        const char* name = dwarf_diename(&child);
        Dwarf_Attribute attr;
        if (name && !dwarf_attr(&child, DW_AT_declaration, &attr)) composites_.emplace(name, dwarf_dieoffset(&child));
      } while (dwarf_siblingof(&child, &child) == 0);
    }
    offset = next;
  }
}

std::optional<std::uint64_t> DwarfTypes::struct_size(const std::string& name) const {
  index();
  auto it = composites_.find(name);
  Dwarf_Die die;
  Dwarf_Word size = 0;
  if (it == composites_.end() || !dwarf_offdie(dwarf_, it->second, &die) || dwarf_aggregate_size(&die, &size) != 0)
    return std::nullopt;
  return size;
}

std::optional<FieldInfo> DwarfTypes::field(const std::string& struct_name, const std::string& path) const {
  index();
  auto it = composites_.find(struct_name);
  Dwarf_Die current;
  if (it == composites_.end() || !dwarf_offdie(dwarf_, it->second, &current)) return std::nullopt;
  FieldInfo total{};
  std::size_t start = 0;
  for (;;) {
    auto dot = path.find('.', start);
    std::unordered_set<Dwarf_Off> seen;
    std::size_t visits = 0;
    auto found = find_member(&current, path.substr(start, dot == std::string::npos ? std::string::npos : dot - start), 0,
                             seen, visits);
    if (!found) return std::nullopt;
    total.bit_offset += found->info.bit_offset;
    total.bit_size = found->info.bit_size;
    total.size = found->info.size;
    if (dot == std::string::npos) return total;
    current = found->type;
    start = dot + 1;
  }
}

std::optional<std::string> DwarfTypes::source_line(std::uint64_t address) const {
  Dwarf_Die cu;
  if (!dwarf_addrdie(dwarf_, address, &cu)) return std::nullopt;
  Dwarf_Line* line = dwarf_getsrc_die(&cu, address);
  if (!line) return std::nullopt;
  int number = 0;
  const char* file = dwarf_linesrc(line, nullptr, nullptr);
  dwarf_lineno(line, &number);
  if (!file) return std::nullopt;
  return std::string(file) + ":" + std::to_string(number);
}

}  // namespace immortal
