// Paths through one function's decoded code (code_decoder.h): which instruction can follow
// which. Direct jumps and fall-through are followed; a jump or call leaving the function ends a
// path (a tail call, the return thunk); an indirect jump could go anywhere in it, so a search
// that meets one answers "reachable" (the cautious answer for every question asked here).
#pragma once

#include "x86_64/code_decoder.h"

#include <cstdint>
#include <functional>
#include <unordered_map>
#include <vector>

namespace immortal {

class ControlFlow {
 public:
  // leaves(target): whether a jump to `target`, outside the code, ends the path (a tail call,
  // the return thunk); if not (a jump into the function's .cold part, which jumps back), the
  // path could go on anywhere. Without it every such jump ends the path.
  explicit ControlFlow(const std::vector<Instruction>& code,
                       const std::function<bool(std::uint64_t target)>& leaves = {});

  // Every jump's destination is known: no indirect jump, no jump out that could come back.
  bool exact() const { return !indirect_; }
  // The instruction at address, or -1.
  int at(std::uint64_t address) const;
  // The instruction that ends where `end` begins (the call a return address follows), or -1.
  int ending_at(std::uint64_t end) const;
  // Every instruction from which a path arrives at `to`: i runs first, and neither i nor any
  // instruction after it before `to` is blocked (`to` is true itself). One backward search.
  std::vector<bool> can_reach(int to, const std::function<bool(const Instruction&)>& blocked = {}) const;
  // Every instruction a path from `from` (after it ran) arrives at; true for all if an indirect
  // jump is met.
  std::vector<bool> reachable_from(int from) const;
  // The instructions of every loop through `at`: reached from it and reaching it again (empty
  // when no path comes back; everything when an indirect jump is met).
  std::vector<bool> loop_through(int at) const;

 private:
  // Successors of instruction i; false if it jumps somewhere unknown.
  bool successors(int i, std::vector<int>& out) const;

  const std::vector<Instruction>& code_;
  std::unordered_map<std::uint64_t, int> index_;
  std::function<bool(std::uint64_t)> leaves_;
  std::vector<std::vector<int>> predecessors_;
  bool indirect_ = false;  // an indirect jump inside the function: any instruction may follow it
};

}  // namespace immortal
