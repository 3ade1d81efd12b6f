// The locks a module takes at fixed addresses (its global spinlocks and mutexes), found the
// way the module's own code names them: an immediate or RIP-relative address loaded into the
// first argument register right before a call to a lock function. This needs no debuginfo
// and works for any module; locks inside objects the module allocates are not found (their
// address is not a constant in the code) — docs/recovery.md says so.
#pragma once

#include "kernel/kernel.h"
#include "kernel/modules.h"

#include <cstdint>
#include <span>
#include <string>
#include <vector>

namespace immortal::repair {

struct LockObject {
  std::uint64_t address = 0;
  std::string kind;             // "spinlock" or "mutex"
  std::string symbol;           // "immortal_fault_lock [immortal_fault]" when known
  // What one acquisition adds to preempt_count (spinlocks: 1, or 0x200 for the _bh variant);
  // -1 when the module's call sites disagree.
  int preempt_delta = 0;
};

// The lock function each call target is, by the kernel image's symbol names (kernel/locking/).
struct LockFunctions {
  std::vector<std::pair<std::uint64_t, std::string>> targets;  // address → name
  static LockFunctions from(const SymbolTable& symbols);
};

// Scans code (starting at guest address base) for lock calls on constant addresses.
std::vector<LockObject> find_lock_calls(std::span<const std::uint8_t> code, std::uint64_t base,
                                        const LockFunctions& functions);
// The same over a module's text, with names from the symbol table.
std::vector<LockObject> module_locks(const Kernel& kernel, const ModuleInfo& module);

}  // namespace immortal::repair
