// The fault classes of the fault-injection driver (guest-agent/fault-module), as the host knows
// them: what the driver does, in which context, and what the stock kernel prints for it. The
// same facts, with prose, are in docs/fault-catalogue.md; the console signatures were taken from
// Debian's 6.1 kernel under QEMU and are checked by the integration tests.
#pragma once

#include <optional>
#include <string>
#include <vector>

namespace immortal::vmm {

struct FaultClass {
  const char* name;
  const char* context;       // where the fault happens
  const char* action;        // what the driver does
  const char* stock_kernel;  // what Linux does with it (panic_on_oops=1, as the guest image sets)
  // Substrings the guest console shows for it, in this order, with recovery off.
  std::vector<const char*> console_signature;
};

const std::vector<FaultClass>& fault_catalogue();
// nullptr for an unknown name.
const FaultClass* find_fault_class(const std::string& name);

// "lkdtm:TYPE": a crash test of the kernel's own LKDTM module (drivers/misc/lkdtm), which the
// guest image loads; the victim writes TYPE to kLkdtmTrigger. Which types exist is up to the
// guest's LKDTM (reading kLkdtmTrigger lists them), so TYPE is only checked for LKDTM's shape
// of names: [A-Z0-9_]{1,40}.
inline constexpr char kLkdtmPrefix[] = "lkdtm:";
inline constexpr char kLkdtmTrigger[] = "/sys/kernel/debug/provoke-crash/DIRECT";
bool is_lkdtm_class(const std::string& name);  // starts with "lkdtm:", well-formed or not
// TYPE of a well-formed "lkdtm:TYPE"; nullopt otherwise.
std::optional<std::string> lkdtm_type(const std::string& name);

}  // namespace immortal::vmm
