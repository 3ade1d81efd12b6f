// The kernel functions that call a driver's callback and carry on when it returns: where a
// crashed callback can be ended as if it had finished. One table for the analysis (which
// contexts can be recovered at all) and the plan (how the call ends).
#pragma once

#include "kernel/symbols.h"
#include "types/btf_types.h"

#include <cstdint>
#include <string>

namespace immortal::repair {

struct Dispatcher {
  const char* function;
  const char* what;
  bool interrupts_on;      // as the dispatcher runs callbacks
  bool hard_interrupt;     // it runs them in hard-interrupt context
  ReturnType returns;      // what the dispatcher expects back (its callback type), BTF or not
  std::uint64_t ended_as;  // what the ended call returns to it now
};

// The dispatcher a caller's symbol name is (a compiler clone "foo.constprop.0" counts as foo),
// or null.
const Dispatcher* dispatcher_named(const std::string& caller);

}  // namespace immortal::repair
