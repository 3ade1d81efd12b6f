#include "kernel/list_walk.h"

#include <fmt/format.h>

namespace immortal {

WalkResult walk_list(const KernelMemory& memory, std::uint64_t head, std::size_t max,
                     const std::function<void(std::uint64_t)>& visit) {
  WalkResult result;
  std::unordered_set<std::uint64_t> seen;
  std::uint64_t node = 0;
  try {
    node = memory.read_u64(head);  // head->next
    while (node != head) {
      if (result.visited >= max) {
        result.complete = false;
        result.problem = fmt::format("more than {} entries; stopped", max);
        break;
      }
      if (!seen.insert(node).second) {
        result.complete = false;
        result.problem = fmt::format("the list loops at {:#x} without returning to its head", node);
        break;
      }
      visit(node);
      ++result.visited;
      node = memory.read_u64(node);
    }
  } catch (const MemoryFault& e) {
    result.complete = false;
    result.problem = fmt::format("unreadable list entry after {} entries: {}", result.visited, e.what());
  }
  return result;
}

}  // namespace immortal
