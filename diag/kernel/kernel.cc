#include "kernel/kernel.h"

#include "base/error.h"
#include "kernel/modules.h"
#include "types/btf_types.h"
#include "x86_64/page_tables.h"

#include <algorithm>
#include <span>
#include <cstring>
#include <set>
#include <sstream>

namespace immortal {

std::optional<std::string> read_vmcoreinfo_note(const PhysicalMemory& memory, std::uint64_t paddr, std::uint64_t size) {
  if (paddr == 0 || size < 24 || size > Vmcoreinfo::kMaxSize) return std::nullopt;
  std::string note(size, '\0');
  try {
    memory.read(paddr, std::as_writable_bytes(std::span(note.data(), note.size())));
  } catch (const MemoryFault&) {
    return std::nullopt;
  }
  std::uint32_t namesz, descsz;
  std::memcpy(&namesz, note.data(), 4);
  std::memcpy(&descsz, note.data() + 4, 4);
  std::uint64_t desc_at = 12 + ((static_cast<std::uint64_t>(namesz) + 3) & ~3ull);
  if (namesz < 10 || note.compare(12, 10, "VMCOREINFO") != 0 || desc_at + descsz > note.size()) return std::nullopt;
  return note.substr(desc_at, descsz);
}

std::vector<std::uint8_t> function_code(const Kernel& kernel, const Symbol& s, std::uint64_t max_bytes) {
  auto next = kernel.symbols().next_after(s);
  std::uint64_t size = std::min<std::uint64_t>(next && next->address > s.address ? next->address - s.address : 0, max_bytes);
  std::vector<std::uint8_t> code(size);
  kernel.memory().read(s.address, std::as_writable_bytes(std::span(code)));
  return code;
}

std::vector<std::string> Kernel::refresh_module_symbols() {
  std::vector<std::string> changed;
  ModuleList modules;
  try {
    modules = read_modules(*this);
  } catch (const std::exception&) {
    return changed;
  }
  if (!modules.walk.complete) return changed;  // a broken list says nothing about what is gone
  std::map<std::string, std::vector<FoundSymbol>, std::less<>> fresh;
  std::set<std::string, std::less<>> live;
  auto text_bounds = symbols_.module_text_bounds();
  for (const auto& m : modules.modules) {
    live.insert(m.name);
    auto known = module_bases_.find(m.name);
    // A module still loading has init code whose symbols only its own table in memory holds
    // (a profile taken of it earlier, at the same base, knew its core only). One profiled while
    // it was loading has, the other way round, symbols of init code freed since, whose memory
    // later modules reuse: code symbols outside its text say so.
    auto bounds = text_bounds.find(m.name);
    bool stale_init = bounds != text_bounds.end() &&
                      (bounds->second.first < m.base || bounds->second.second - m.base >= m.text_size);
    if (known != module_bases_.end() && known->second == m.base && !m.init_base && !stale_init) continue;
    try {
      fresh[m.name] = read_module_symbols(*this, m);
      module_bases_[m.name] = m.base;
      from_memory_.insert(m.name);
      changed.push_back(m.name);
    } catch (const std::exception&) {
      // Unreadable: keep what the profile said; the analysis notes stale symbols as before.
    }
  }
  std::size_t gone = std::erase_if(module_bases_, [&](const auto& entry) { return !live.count(entry.first); });
  std::erase_if(from_memory_, [&](const std::string& name) { return !live.count(name); });
  if (fresh.empty() && gone == 0) return changed;  // the profile's view still holds: nothing to re-sort
  symbols_.update_modules(fresh, live);
  return changed;
}

ReturnType Kernel::function_return(std::string_view module, const std::string& function) const {
  auto it = returns_.find(module);
  // A module reloaded since the profile may be another build: its old BTF says nothing.
  if (it == returns_.end() || from_memory_.count(module)) return ReturnType::unknown;
  auto f = it->second.find(function);
  return f == it->second.end() ? ReturnType::unknown : f->second;
}

std::uint64_t Kernel::symbol(const std::string& name) const {
  auto a = symbols_.address_of(name);
  if (!a) fail(ExitCode::bad_input, "the profile's symbols have no {}", name);
  return *a;
}

namespace {

// Linux 6.2 moved current_task, __preempt_count and cpu_number into the per-CPU struct
// pcpu_hot: everything else asks for them by their own names, found here from the struct's
// layout (BTF), so that one code path reads both generations.
void alias_pcpu_hot(SymbolTable& symbols, const TypeInfo& types) {
  auto hot = symbols.percpu_offset("pcpu_hot");
  if (!hot) return;
  for (auto [name, field] : {std::pair{"current_task", "current_task"}, {"__preempt_count", "preempt_count"},
                             {"cpu_number", "cpu_number"}, {"cpu_current_top_of_stack", "top_of_stack"}})
    if (!symbols.percpu_offset(name))
      if (auto f = types.field("pcpu_hot", field)) symbols.add_percpu(name, *hot + f->byte_offset());
}

// Where /proc/modules ("name size refcount deps state 0xaddress [taints]") says each module is.
std::map<std::string, std::uint64_t> module_bases(const std::string& proc_modules) {
  std::map<std::string, std::uint64_t> bases;
  std::istringstream lines(proc_modules);
  std::string line;
  while (std::getline(lines, line)) {
    std::istringstream fields(line);
    std::string name, size, refs, deps, state, address;
    if (!(fields >> name >> size >> refs >> deps >> state >> address) || address.rfind("0x", 0) != 0) continue;
    try {
      bases[name] = std::stoull(address.substr(2), nullptr, 16);
    } catch (const std::exception&) {
    }
  }
  return bases;
}

}  // namespace

std::unique_ptr<Kernel> Kernel::assemble(const PhysicalMemory& memory, KernelLayout layout, SymbolTable symbols,
                                         std::unique_ptr<TypeInfo> types, std::string release,
                                         const std::string& proc_modules,
                                         const std::optional<std::string>& vmcoreinfo_text) {
  std::unique_ptr<Kernel> k(new Kernel);
  if (vmcoreinfo_text) k->vmcoreinfo_ = Vmcoreinfo::parse(*vmcoreinfo_text);
  k->module_bases_ = module_bases(proc_modules);
  k->symbols_ = std::move(symbols);
  k->types_ = std::move(types);
  if (k->types_) alias_pcpu_hot(k->symbols_, *k->types_);
  k->release_ = std::move(release);
  k->memory_ = std::make_unique<KernelMemory>(memory, layout);
  return k;
}

std::unique_ptr<Kernel> Kernel::open(const PhysicalMemory& memory, const GuestProfile& profile,
                                     std::optional<std::string> vmcoreinfo_text, std::unique_ptr<TypeInfo> types) {
  std::unique_ptr<Kernel> k(new Kernel);
  k->symbols_ = SymbolTable::from_kallsyms(profile.kallsyms, profile.image_symbols, profile.image_base);
  if (k->symbols_.size() == 0) fail(ExitCode::bad_input, "the profile has no kernel symbols");
  k->types_ = types ? std::move(types) : BtfTypes::parse(profile.btf_vmlinux);
  alias_pcpu_hot(k->symbols_, *k->types_);
  k->release_ = profile.kernel_release;
  if (const auto* btf = dynamic_cast<const BtfTypes*>(k->types_.get()))
    for (const auto& [module, raw] : profile.btf_modules) k->returns_[module] = btf->function_returns(raw);
  k->module_bases_ = module_bases(profile.modules);

  if (!vmcoreinfo_text) vmcoreinfo_text = read_vmcoreinfo_note(memory, profile.vmcoreinfo_paddr, profile.vmcoreinfo_size);
  if (vmcoreinfo_text) k->vmcoreinfo_ = Vmcoreinfo::parse(*vmcoreinfo_text);

  KernelLayout layout;
  std::uint64_t top = k->symbol("init_top_pgt");
  if (k->vmcoreinfo_) {
    const auto& vi = *k->vmcoreinfo_;
    if (!vi.release().empty() && !profile.kernel_release.empty() && vi.release() != profile.kernel_release)
      fail(ExitCode::bad_input, "the profile is of kernel {} but the memory holds kernel {}", profile.kernel_release,
           vi.release());
    auto top_in_dump = vi.symbol("init_top_pgt");
    if (top_in_dump && *top_in_dump != top)
      fail(ExitCode::bad_input,
           "the profile belongs to another boot of this kernel: its symbols are shifted by {:#x} from the memory's "
           "(KASLR); use the profile taken at that boot",
           *top_in_dump - top);
    layout.phys_base = vi.number("phys_base").value_or(0);
    layout.five_level = vi.number("pgtable_l5_enabled").value_or(0) != 0;
    layout.kaslr_offset = vi.kernel_offset().value_or(0);
  } else {
    // Without VMCOREINFO there is no phys_base: assume the kernel was not moved physically
    // (true for QEMU's direct kernel boot) and say so in the report.
    k->warnings_.push_back("no VMCOREINFO: phys_base assumed 0 and 4-level paging");
  }
  layout.page_table = top - x86_64::kStartKernelMap + layout.phys_base;
  k->memory_ = std::make_unique<KernelMemory>(memory, layout);
  // The direct map's base is a variable of the kernel (randomised by KASLR).
  if (auto pob = k->symbols_.address_of("page_offset_base")) {
    try {
      layout.page_offset_base = k->memory_->read_u64(*pob);
    } catch (const MemoryFault& e) {
      fail(ExitCode::bad_input, "cannot read the kernel's page tables or page_offset_base: {}", e.what());
    }
    k->memory_ = std::make_unique<KernelMemory>(memory, layout);
  }
  return k;
}

}  // namespace immortal
