#include "engine/lock_calls.h"

#include <map>
#include <set>

namespace immortal::repair {

namespace {

// kernel/locking/{spinlock,mutex,rwsem,semaphore}.c: the out-of-line entry points code calls.
// SOFTIRQ_LOCK_OFFSET = SOFTIRQ_DISABLE_OFFSET (0x200) + PREEMPT_LOCK_OFFSET (1 with PREEMPT_COUNT).
constexpr std::uint32_t kBh = 0x201;
constexpr LockFunction kLockFunctions[] = {
    {"_raw_spin_lock", LockType::spinlock, false, 1},
    {"_raw_spin_lock_nested", LockType::spinlock, false, 1},
    {"_raw_spin_lock_irqsave", LockType::spinlock, false, 1},
    {"_raw_spin_lock_irqsave_nested", LockType::spinlock, false, 1},
    {"_raw_spin_lock_irq", LockType::spinlock, false, 1},
    {"_raw_spin_lock_bh", LockType::spinlock, false, kBh},
    {"_raw_spin_trylock", LockType::spinlock, false, 1},
    {"_raw_spin_trylock_bh", LockType::spinlock, false, kBh},
    {"_raw_read_lock", LockType::rwlock, true, 1},
    {"_raw_read_lock_irqsave", LockType::rwlock, true, 1},
    {"_raw_read_lock_irq", LockType::rwlock, true, 1},
    {"_raw_read_lock_bh", LockType::rwlock, true, kBh},
    {"_raw_read_trylock", LockType::rwlock, true, 1},
    {"_raw_write_lock", LockType::rwlock, false, 1},
    {"_raw_write_lock_nested", LockType::rwlock, false, 1},
    {"_raw_write_lock_irqsave", LockType::rwlock, false, 1},
    {"_raw_write_lock_irq", LockType::rwlock, false, 1},
    {"_raw_write_lock_bh", LockType::rwlock, false, kBh},
    {"_raw_write_trylock", LockType::rwlock, false, 1},
    {"mutex_lock", LockType::mutex, false, 0},
    {"mutex_lock_interruptible", LockType::mutex, false, 0},
    {"mutex_lock_killable", LockType::mutex, false, 0},
    {"mutex_lock_io", LockType::mutex, false, 0},
    {"mutex_trylock", LockType::mutex, false, 0},
    {"down_read", LockType::rwsem, true, 0},
    {"down_read_interruptible", LockType::rwsem, true, 0},
    {"down_read_killable", LockType::rwsem, true, 0},
    {"down_read_trylock", LockType::rwsem, true, 0},
    {"down_write", LockType::rwsem, false, 0},
    {"down_write_killable", LockType::rwsem, false, 0},
    {"down_write_trylock", LockType::rwsem, false, 0},
    {"down", LockType::semaphore, false, 0},
    {"down_interruptible", LockType::semaphore, false, 0, false, true},
    {"down_killable", LockType::semaphore, false, 0, false, true},
    {"down_trylock", LockType::semaphore, false, 0, false, true},
    {"down_timeout", LockType::semaphore, false, 0, false, true},
    {"up", LockType::semaphore, false, 0, true},
    // lock_sock(sk) is lock_sock_nested(sk, 0); setsockopt paths call the sockopt_ wrappers.
    {"lock_sock_nested", LockType::socket, false, 0},
    {"sockopt_lock_sock", LockType::socket, false, 0},
    {"release_sock", LockType::socket, false, 0, true},
    {"sockopt_release_sock", LockType::socket, false, 0, true},
};

const char* const kRegisterNames[16] = {"rax", "rcx", "rdx", "rbx", "rsp", "rbp", "rsi", "rdi",
                                        "r8",  "r9",  "r10", "r11", "r12", "r13", "r14", "r15"};

}  // namespace

const char* to_string(LockType type) {
  switch (type) {
    case LockType::spinlock: return "spinlock";
    case LockType::rwlock: return "rwlock";
    case LockType::mutex: return "mutex";
    case LockType::rwsem: return "rwsem";
    case LockType::semaphore: return "semaphore";
    case LockType::socket: return "socket";
  }
  return "?";
}

const char* register_name(int number) { return number >= 0 && number < 16 ? kRegisterNames[number] : "?"; }

bool callee_saved(int number) { return number == 3 || number == 5 || (number >= 12 && number <= 15); }

const LockFunction* lock_function_named(std::string_view name) {
  for (const auto& l : kLockFunctions)
    if (l.name == name) return &l;
  return nullptr;
}

LockFunctions LockFunctions::from(const SymbolTable& symbols) {
  LockFunctions f;
  for (const auto& l : kLockFunctions)
    if (auto a = symbols.address_in(l.name, "")) f.targets.emplace_back(*a, &l);
  return f;
}

const LockFunction* LockFunctions::at(std::uint64_t address) const {
  for (const auto& [a, f] : targets)
    if (a == address) return f;
  return nullptr;
}

namespace {

// Where %rdi came from just before code[at] runs, over every path that reaches it: each
// predecessor (the instruction before, unless it jumps away; every jump that lands here) must
// end in the same load into %rdi. A call or an instruction that computes %rdi otherwise makes
// it unknown; a path that loops back adds nothing new.
class ArgumentTracer {
 public:
  explicit ArgumentTracer(const std::vector<Instruction>& code) : code_(code) {
    for (std::size_t i = 0; i < code.size(); ++i) {
      index_[code[i].address] = i;
      const auto& c = code[i];
      if ((c.kind == Instruction::Kind::jump || c.kind == Instruction::Kind::conditional_jump) && c.target)
        jumps_to_[*c.target].push_back(i);
    }
  }

  std::optional<Instruction::Load> before(std::size_t at) {
    steps_ = 0;
    visiting_.clear();
    auto r = reach(at);
    if (!r.known || !r.load) return std::nullopt;
    return r.load;
  }

 private:
  struct Result {
    bool known = true;                     // false: some path leaves %rdi unknown
    std::optional<Instruction::Load> load; // empty with known: no path contributed (a loop)
  };

  static bool same(const Instruction::Load& a, const Instruction::Load& b) {
    return a.dest == b.dest && a.base == b.base && a.displacement == b.displacement;
  }

  Result merge(Result a, const Result& b) {
    if (!a.known || !b.known) return {false, std::nullopt};
    if (!a.load) return b;
    if (!b.load) return a;
    return same(*a.load, *b.load) ? a : Result{false, std::nullopt};
  }

  // %rdi just before code[at]
  Result reach(std::size_t at) {
    if (++steps_ > kMaxSteps || !visiting_.insert(at).second) return {true, std::nullopt};
    Result r;
    bool any = false;
    if (at > 0) {
      const auto& prev = code_[at - 1];
      if (prev.kind != Instruction::Kind::jump && prev.kind != Instruction::Kind::ret) {
        r = merge(r, after(at - 1));
        any = true;
      }
    }
    if (auto it = jumps_to_.find(code_[at].address); it != jumps_to_.end())
      for (std::size_t j : it->second) {
        r = merge(r, after(j));
        any = true;
      }
    visiting_.erase(at);
    return any ? r : Result{false, std::nullopt};  // the function's start: %rdi is its caller's
  }

  // %rdi just after code[at]
  Result after(std::size_t at) {
    const auto& i = code_[at];
    if (i.kind == Instruction::Kind::call) return {false, std::nullopt};
    if (i.writes & (1u << kRegRdi)) {
      if (i.load && i.load->dest == kRegRdi) return {true, i.load};
      return {false, std::nullopt};
    }
    return reach(at);
  }

  static constexpr std::size_t kMaxSteps = 512;
  const std::vector<Instruction>& code_;
  std::map<std::uint64_t, std::size_t> index_;
  std::map<std::uint64_t, std::vector<std::size_t>> jumps_to_;
  std::set<std::size_t> visiting_;
  std::size_t steps_ = 0;
};

}  // namespace

std::vector<LockCallSite> find_lock_calls(const std::vector<Instruction>& code, const LockFunctions& functions,
                                          std::vector<LockCallSite>* unfollowed) {
  ArgumentTracer tracer(code);
  std::vector<LockCallSite> out;
  for (std::size_t i = 0; i < code.size(); ++i) {
    const Instruction& call = code[i];
    if (call.kind != Instruction::Kind::call || !call.target) continue;
    const LockFunction* f = functions.at(*call.target);
    if (!f) continue;
    LockCallSite site;
    site.call = call.address;
    site.function = f;
    auto load = tracer.before(i);
    if (!load || load->base == 4) {  // unknown, or %rsp: a lock on the stack is found by its owner
      if (unfollowed) unfollowed->push_back(site);
      continue;
    }
    if (load->base < 0) {
      site.absolute = static_cast<std::uint64_t>(load->displacement);
    } else {
      site.base = load->base;
      site.displacement = load->displacement;
    }
    out.push_back(site);
  }
  return out;
}

std::vector<LockCallSite> find_lock_calls(std::span<const std::uint8_t> code, std::uint64_t base,
                                          const LockFunctions& functions) {
  return find_lock_calls(decode_code(code, base), functions);
}

}  // namespace immortal::repair
