#include "x86_64/control_flow.h"

namespace immortal {

ControlFlow::ControlFlow(const std::vector<Instruction>& code, const std::function<bool(std::uint64_t)>& leaves)
    : code_(code), leaves_(leaves), predecessors_(code.size()) {
  for (std::size_t i = 0; i < code.size(); ++i) index_.emplace(code[i].address, static_cast<int>(i));
  std::vector<int> next;
  for (std::size_t i = 0; i < code.size(); ++i) {
    if (!successors(static_cast<int>(i), next)) indirect_ = true;
    for (int n : next) predecessors_[static_cast<std::size_t>(n)].push_back(static_cast<int>(i));
  }
}

int ControlFlow::at(std::uint64_t address) const {
  auto it = index_.find(address);
  return it == index_.end() ? -1 : it->second;
}

int ControlFlow::ending_at(std::uint64_t end) const {
  int i = at(end);
  if (i > 0 && code_[static_cast<std::size_t>(i - 1)].address + code_[static_cast<std::size_t>(i - 1)].size == end) return i - 1;
  if (i < 0 && !code_.empty() && code_.back().address + code_.back().size == end) return static_cast<int>(code_.size() - 1);
  return -1;
}

bool ControlFlow::successors(int i, std::vector<int>& out) const {
  out.clear();
  const Instruction& insn = code_[static_cast<std::size_t>(i)];
  using Kind = Instruction::Kind;
  bool falls_through = insn.kind == Kind::other || insn.kind == Kind::call || insn.kind == Kind::conditional_jump;
  if (falls_through && static_cast<std::size_t>(i + 1) < code_.size()) out.push_back(i + 1);
  if (insn.kind == Kind::jump || insn.kind == Kind::conditional_jump) {
    if (!insn.target) return false;  // indirect: anywhere
    if (int t = at(*insn.target); t >= 0) out.push_back(t);
    else if (leaves_ && !leaves_(*insn.target)) return false;  // out, and maybe back: anywhere
  }
  return true;
}

std::vector<bool> ControlFlow::can_reach(int to, const std::function<bool(const Instruction&)>& blocked) const {
  std::vector<bool> seen(code_.size(), indirect_);
  if (indirect_ || to < 0 || static_cast<std::size_t>(to) >= code_.size()) return seen;
  seen[static_cast<std::size_t>(to)] = true;
  std::vector<int> work{to};
  while (!work.empty()) {
    int i = work.back();
    work.pop_back();
    for (int p : predecessors_[static_cast<std::size_t>(i)])
      if (!seen[static_cast<std::size_t>(p)] && (!blocked || !blocked(code_[static_cast<std::size_t>(p)]))) {
        seen[static_cast<std::size_t>(p)] = true;
        work.push_back(p);
      }
  }
  return seen;
}

std::vector<bool> ControlFlow::reachable_from(int from) const {
  std::vector<bool> seen(code_.size(), false);
  if (from < 0 || static_cast<std::size_t>(from) >= code_.size()) return seen;
  std::vector<int> work{from}, next;
  while (!work.empty()) {
    int i = work.back();
    work.pop_back();
    if (!successors(i, next)) return std::vector<bool>(code_.size(), true);
    for (int n : next)
      if (!seen[static_cast<std::size_t>(n)]) {
        seen[static_cast<std::size_t>(n)] = true;
        work.push_back(n);
      }
  }
  return seen;
}

std::vector<bool> ControlFlow::loop_through(int at) const {
  std::vector<bool> out(code_.size(), false);
  if (at < 0 || static_cast<std::size_t>(at) >= code_.size()) return out;
  std::vector<bool> after = reachable_from(at), before = can_reach(at);
  if (!after[static_cast<std::size_t>(at)]) return out;
  for (std::size_t i = 0; i < out.size(); ++i) out[i] = after[i] && before[i];
  return out;
}

}  // namespace immortal
