// One guest kernel as the readers see it: its memory (by kernel virtual address), its symbols
// and its types, assembled from a memory source, the healthy-guest profile and VMCOREINFO. The
// same object serves a live guest and a dump.
#pragma once

#include "kernel/kernel_memory.h"
#include "kernel/symbols.h"
#include "kernel/vmcoreinfo.h"
#include "memory/physical_memory.h"
#include "profile/guest_profile.h"
#include "types/btf_types.h"
#include "types/type_info.h"
#include "x86_64/registers.h"

#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <vector>

namespace immortal {

// x86-64 with 4-level paging: where the kernel's half of the address space starts. A kernel
// pointer read from guest memory lies at or above it.
inline constexpr std::uint64_t kKernelSpaceStart = 0xffff800000000000ull;
// A word that can point at a kernel object: in the kernel's half, short of its last page
// (where ERR_PTR values live).
inline constexpr bool kernel_pointer(std::uint64_t v) { return v >= kKernelSpaceStart && v < ~0xfffull; }

class Kernel;
struct OrcTable;  // kernel/orc_unwind.h

// The bytes of the function at symbol s: up to the next symbol, at most max_bytes (none when s
// is the last symbol). Throws MemoryFault when they cannot be read.
std::vector<std::uint8_t> function_code(const Kernel& kernel, const Symbol& s, std::uint64_t max_bytes);

class Kernel {
 public:
  // vmcoreinfo: the dump's note, if any; for live memory it is read from the guest at the
  // profile's VMCOREINFO address. Throws Error(ExitCode::bad_input) when the pieces do not fit
  // (another kernel release, another boot's KASLR offsets, no way to find the page tables).
  // types: struct layouts to use instead of the profile's BTF (e.g. DWARF of a debug vmlinux).
  static std::unique_ptr<Kernel> open(const PhysicalMemory& memory, const GuestProfile& profile,
                                      std::optional<std::string> vmcoreinfo_text,
                                      std::unique_ptr<TypeInfo> types = nullptr);
  // From ready parts (tests and fuzz targets build synthetic kernels this way).
  static std::unique_ptr<Kernel> assemble(const PhysicalMemory& memory, KernelLayout layout, SymbolTable symbols,
                                          std::unique_ptr<TypeInfo> types, std::string release,
                                          const std::string& proc_modules = "",
                                          const std::optional<std::string>& vmcoreinfo_text = std::nullopt);

  const KernelMemory& memory() const { return *memory_; }
  const SymbolTable& symbols() const { return symbols_; }
  // Uses `shared` for the kernel image's symbols when it holds the same ones (the host's copy for
  // every guest of this kernel: vmm/repair/shared_kernel_files.h). Before the kernel is read by others.
  bool share_image_symbols(std::shared_ptr<const ImageSymbols> shared) { return symbols_.share_image(std::move(shared)); }
  const TypeInfo& types() const { return *types_; }
  // The types as BTF (nullptr when they come from elsewhere, e.g. DWARF).
  const BtfTypes* btf() const { return dynamic_cast<const BtfTypes*>(types_.get()); }
  // Reads the BTF from `shared` when it holds the same bytes (the host's copy for every guest of
  // this kernel: BtfTypes::share). Before the kernel is read by others.
  bool share_btf(std::span<const std::uint8_t> shared, std::shared_ptr<const void> keeper) {
    auto* btf = dynamic_cast<BtfTypes*>(types_.get());
    return btf && btf->share(shared, std::move(keeper));
  }
  const std::optional<Vmcoreinfo>& vmcoreinfo() const { return vmcoreinfo_; }
  const std::string& release() const { return release_; }
  // Address of a kernel symbol; throws Error(ExitCode::bad_input) if the profile lacks it.
  std::uint64_t symbol(const std::string& name) const;
  // Where the profile saw each module loaded (/proc/modules), by name: a module whose base in
  // memory differs was reloaded since, and the profile's symbols for it are stale.
  const std::map<std::string, std::uint64_t>& profile_module_bases() const { return module_bases_; }
  // Modules loaded (or reloaded elsewhere) since the profile was taken get their symbols from
  // their own symbol tables in memory; those of modules gone are dropped. Returns the modules
  // whose symbols changed. Bounded; never throws (an unreadable module keeps what it had).
  std::vector<std::string> refresh_module_symbols();
  // Modules whose symbols came from guest memory rather than the profile.
  const std::set<std::string, std::less<>>& modules_read_from_memory() const { return from_memory_; }
  // What a module's function returns, from the module's BTF in the profile (unknown without).
  ReturnType function_return(std::string_view module, const std::string& function) const;
  // Notes on what could not be checked or was worked around, for the report.
  const std::vector<std::string>& warnings() const { return warnings_; }

  // The kernel image's ORC table once an unwinder has read it (nullptr before): it does not
  // change after boot, so a Kernel that serves many crashes reads it once.
  std::shared_ptr<const OrcTable> orc_image() const {
    std::lock_guard lock(orc_mutex_);
    return orc_image_;
  }
  void keep_orc_image(std::shared_ptr<const OrcTable> table) const {
    std::lock_guard lock(orc_mutex_);
    orc_image_ = std::move(table);
  }

 private:
  Kernel() = default;
  mutable std::mutex orc_mutex_;
  mutable std::shared_ptr<const OrcTable> orc_image_;
  SymbolTable symbols_;
  std::unique_ptr<TypeInfo> types_;
  std::unique_ptr<KernelMemory> memory_;
  std::optional<Vmcoreinfo> vmcoreinfo_;
  std::string release_;
  std::vector<std::string> warnings_;
  std::map<std::string, std::uint64_t> module_bases_;
  std::set<std::string, std::less<>> from_memory_;
  std::map<std::string, std::map<std::string, ReturnType>, std::less<>> returns_;  // by module, from its BTF
};

// The VMCOREINFO note the guest kernel keeps at paddr (an ELF note), read from its memory.
std::optional<std::string> read_vmcoreinfo_note(const PhysicalMemory& memory, std::uint64_t paddr, std::uint64_t size);

}  // namespace immortal
