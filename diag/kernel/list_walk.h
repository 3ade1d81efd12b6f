// Walking a kernel list_head ring in untrusted memory: bounded, cycle-safe, and honest about
// where it stopped.
#pragma once

#include "kernel/kernel_memory.h"

#include <cstdint>
#include <functional>
#include <string>
#include <unordered_set>

namespace immortal {

struct WalkResult {
  std::size_t visited = 0;
  bool complete = true;  // false: stopped early, problem says why
  std::string problem;
};

// Calls visit(node) for each node after head (list_head addresses, not containers) until the
// ring returns to head. Stops at max nodes, at a node seen before (a cycle not through head), or
// at unreadable memory.
WalkResult walk_list(const KernelMemory& memory, std::uint64_t head, std::size_t max,
                     const std::function<void(std::uint64_t node)>& visit);

}  // namespace immortal
