// Where code takes locks, read from the code itself: every direct call to one of the kernel's
// lock functions (kernel/locking/: spinlocks, rwlocks, mutexes, rwsems, semaphores; a socket's
// lock_sock()/release_sock() pair, net/core/sock.c) and how the
// lock's address reached the first argument register before it — a constant (an immediate or
// RIP-relative address: a global lock), or a register plus a displacement (a lock inside an
// object the code holds a pointer to: `lea 0x10(%rbx),%rdi`). Given the registers a frame had,
// a call site of a function on the crashing stack names the lock it took. No debuginfo needed;
// works for the kernel's own code as for any module's.
#pragma once

#include "kernel/symbols.h"
#include "x86_64/code_decoder.h"

#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace immortal::repair {

enum class LockType { spinlock, rwlock, mutex, rwsem, semaphore, socket };
const char* to_string(LockType type);

struct LockFunction {
  const char* name;
  LockType type;
  bool read;          // rwlock, rwsem: taken for reading
  // What one acquisition adds to preempt_count with CONFIG_PREEMPT_COUNT: 1 for spinlocks and
  // rwlocks, SOFTIRQ_LOCK_OFFSET (0x200 + 1) for the _bh variants, 0 for sleeping locks.
  std::uint32_t preempt_delta;
  // Releases the lock instead (release_sock, up: a socket's or a semaphore's holder is not
  // recorded, so where its release is called on the path tells whether an acquisition before is
  // still in force).
  bool release = false;
  // May fail, returning non-zero (down_interruptible, down_trylock …): held only where the code
  // went on as after a success.
  bool conditional = false;
};

// x86-64 register numbers as instructions encode them: 0 rax, 1 rcx, 2 rdx, 3 rbx, 4 rsp,
// 5 rbp, 6 rsi, 7 rdi, 8–15 r8–r15; the name X86Registers::field takes.
const char* register_name(int number);
bool callee_saved(int number);

struct LockCallSite {
  std::uint64_t call = 0;                 // address of the call instruction
  const LockFunction* function = nullptr;
  std::optional<std::uint64_t> absolute;  // the lock's address, when it is a constant
  int base = -1;                          // else: the register holding the base …
  std::int64_t displacement = 0;          // … plus this
};

// The lock function of that name (a kernel function, without compiler suffixes), or nullptr.
const LockFunction* lock_function_named(std::string_view name);

// The lock functions of one kernel, by address (from its symbols).
struct LockFunctions {
  std::vector<std::pair<std::uint64_t, const LockFunction*>> targets;
  static LockFunctions from(const SymbolTable& symbols);
  const LockFunction* at(std::uint64_t address) const;
};

// Every lock call in code (which starts at guest address base) whose argument it can follow
// back, over every path that reaches the call within the code, to one instruction that set %rdi
// from a register, an address computation or a constant (no call in between). In address order.
// The lock calls whose argument cannot be followed (or is on the stack) go to unfollowed, with
// neither an absolute address nor a base: they take a lock that cannot be named from here.
std::vector<LockCallSite> find_lock_calls(std::span<const std::uint8_t> code, std::uint64_t base,
                                          const LockFunctions& functions);
std::vector<LockCallSite> find_lock_calls(const std::vector<Instruction>& code, const LockFunctions& functions,
                                          std::vector<LockCallSite>* unfollowed = nullptr);

}  // namespace immortal::repair
