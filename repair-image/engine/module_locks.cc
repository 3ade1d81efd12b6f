#include "engine/module_locks.h"

#include "base/error.h"

#include <algorithm>
#include <cstring>
#include <map>

namespace immortal::repair {

namespace {

// kernel/locking/spinlock.c and mutex.c: the out-of-line lock entry points a module calls.
struct LockFunction {
  const char* name;
  const char* kind;
  int preempt_delta;
};
constexpr LockFunction kLockFunctions[] = {
    {"_raw_spin_lock", "spinlock", 1},         {"_raw_spin_lock_irqsave", "spinlock", 1},
    {"_raw_spin_lock_irq", "spinlock", 1},     {"_raw_spin_lock_bh", "spinlock", 0x200},
    {"_raw_spin_trylock", "spinlock", 1},      {"mutex_lock", "mutex", 0},
    {"mutex_lock_interruptible", "mutex", 0},  {"mutex_lock_killable", "mutex", 0},
    {"mutex_trylock", "mutex", 0},             {"mutex_lock_io", "mutex", 0},
};
constexpr std::uint64_t kMaxModuleText = 64ull << 20;

const LockFunction* lock_function(const LockFunctions& functions, std::uint64_t target) {
  for (const auto& [address, name] : functions.targets)
    if (address == target)
      for (const auto& f : kLockFunctions)
        if (name == f.name) return &f;
  return nullptr;
}

std::int32_t rel32(std::span<const std::uint8_t> code, std::size_t at) {
  std::int32_t v;
  std::memcpy(&v, code.data() + at, 4);
  return v;
}

}  // namespace

LockFunctions LockFunctions::from(const SymbolTable& symbols) {
  LockFunctions f;
  for (const auto& l : kLockFunctions)
    if (auto a = symbols.address_in(l.name, "")) f.targets.emplace_back(*a, l.name);
  return f;
}

std::vector<LockObject> find_lock_calls(std::span<const std::uint8_t> code, std::uint64_t base,
                                        const LockFunctions& functions) {
  std::map<std::uint64_t, LockObject> found;
  for (std::size_t i = 0; i + 12 <= code.size(); ++i) {
    if (code[i] != 0x48) continue;
    std::uint64_t object;
    if (code[i + 1] == 0xc7 && code[i + 2] == 0xc7) {  // mov $imm32,%rdi (sign-extended)
      object = static_cast<std::uint64_t>(static_cast<std::int64_t>(rel32(code, i + 3)));
    } else if (code[i + 1] == 0x8d && code[i + 2] == 0x3d) {  // lea rel32(%rip),%rdi
      object = base + i + 7 + static_cast<std::uint64_t>(static_cast<std::int64_t>(rel32(code, i + 3)));
    } else {
      continue;
    }
    if (code[i + 7] != 0xe8) continue;  // the call must follow at once: rdi is still the lock
    std::uint64_t target = base + i + 12 + static_cast<std::uint64_t>(static_cast<std::int64_t>(rel32(code, i + 8)));
    const LockFunction* f = lock_function(functions, target);
    if (!f) continue;
    auto [it, fresh] = found.try_emplace(object, LockObject{object, f->kind, "", f->preempt_delta});
    if (!fresh) {
      if (it->second.kind != f->kind) it->second.kind = "ambiguous";
      if (it->second.preempt_delta != f->preempt_delta) it->second.preempt_delta = -1;
    }
  }
  std::vector<LockObject> out;
  for (auto& [address, lock] : found)
    if (lock.kind != "ambiguous") out.push_back(lock);
  return out;
}

std::vector<LockObject> module_locks(const Kernel& kernel, const ModuleInfo& module) {
  if (module.text_size == 0 || module.text_size > kMaxModuleText)
    fail(ExitCode::bad_input, "module {} has an implausible text size {}", module.name, module.text_size);
  std::vector<std::uint8_t> text(module.text_size);
  kernel.memory().read(module.base, std::as_writable_bytes(std::span(text)));
  auto locks = find_lock_calls(text, module.base, LockFunctions::from(kernel.symbols()));
  // Only objects in the module's own data count: a constant outside it is not a module lock.
  std::erase_if(locks, [&](const LockObject& l) { return l.address < module.base + module.text_size ||
                                                         l.address >= module.base + module.size; });
  for (auto& l : locks)
    if (const Symbol* s = kernel.symbols().lookup(l.address); s && s->address == l.address)
      l.symbol = s->name + (s->module.empty() ? "" : " [" + s->module + "]");
  return locks;
}

}  // namespace immortal::repair
