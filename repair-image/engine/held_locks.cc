#include "engine/held_locks.h"

#include "base/clock.h"
#include "base/error.h"
#include "engine/crash_analysis.h"
#include "engine/repair_plan.h"
#include "kernel/lock_waiters.h"
#include "kernel/modules.h"
#include "kernel/slab.h"
#include "x86_64/control_flow.h"

#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <map>
#include <optional>
#include <set>
#include <unordered_set>

namespace immortal::repair {

namespace {

bool ownerless(LockType type) { return type == LockType::socket || type == LockType::semaphore; }

// Where a conditional acquisition (non-zero on failure: down_interruptible …) goes on when it
// failed: the code tests the result (test %eax,%eax) and branches on it. The failure side's
// first instruction, or -1 when the code is not that shape.
int failure_side(std::span<const std::uint8_t> code, std::uint64_t base, const std::vector<Instruction>& insns,
                 const ControlFlow& flow, std::size_t call) {
  if (call + 2 >= insns.size()) return -1;
  const Instruction& test = insns[call + 1];
  const Instruction& jcc = insns[call + 2];
  std::uint64_t at = test.address - base, jat = jcc.address - base;
  if (test.size != 2 || at + 2 > code.size() || code[at] != 0x85 || code[at + 1] != 0xc0) return -1;
  if (jcc.kind != Instruction::Kind::conditional_jump || !jcc.target || jat + 2 > code.size()) return -1;
  std::uint8_t op = code[jat] == 0x0f ? static_cast<std::uint8_t>(code[jat + 1] - 0x10) : code[jat];
  if (op == 0x75) return flow.at(*jcc.target);                                         // jne: fails when taken
  if (op == 0x74) return call + 3 < insns.size() ? static_cast<int>(call + 3) : -1;    // je: fails falling through
  return -1;
}

// Whether a lock of `type` without a recorded holder (a semaphore, a socket) is held at
// instruction `here` of a function: every path from its entry there passes an acquisition (a
// conditional one only on its success side) with no release after it. Where the paths are not
// all known: no.
bool held_by_flow(std::span<const std::uint8_t> code, std::uint64_t base, const std::vector<Instruction>& insns,
                  const ControlFlow& flow, int here, const LockFunctions& functions, LockType type) {
  if (here < 0 || !flow.exact()) return false;
  auto function_at = [&](const Instruction& i) -> const LockFunction* {
    if (i.kind != Instruction::Kind::call || !i.target) return nullptr;
    const LockFunction* f = functions.at(*i.target);
    return f && f->type == type ? f : nullptr;
  };
  std::vector<bool> acquiring(insns.size(), false);
  std::vector<int> failures;
  bool any = false;
  for (std::size_t i = 0; i < insns.size(); ++i) {
    const LockFunction* f = function_at(insns[i]);
    if (!f || f->release) continue;
    if (!f->conditional) {
      acquiring[i] = any = true;
    } else if (int fail = failure_side(code, base, insns, flow, i); fail >= 0) {
      acquiring[i] = any = true;
      failures.push_back(fail);
    }
  }
  if (!any) return false;  // takes no such lock: nothing to search
  auto acquires = [&](const Instruction& i) {
    int n = flow.at(i.address);
    return n >= 0 && acquiring[static_cast<std::size_t>(n)];
  };
  // Where a path to here starts without passing an acquisition: one backward search.
  std::vector<bool> open = flow.can_reach(here, acquires);
  if (insns.empty() || open[0]) return false;  // from the entry
  for (int fail : failures)
    if (open[static_cast<std::size_t>(fail)]) return false;
  for (std::size_t i = 0; i < insns.size(); ++i)
    if (const LockFunction* f = function_at(insns[i]); f && f->release && open[i]) return false;
  return true;
}

constexpr std::uint64_t kPage = 4096;
constexpr std::size_t kMaxValues = 2048;          // pointers taken from the crashing frames
constexpr std::size_t kMaxObjects = 512;          // objects they point to, read whole
constexpr std::size_t kMaxSecondObjects = 2048;   // objects those point to, searched for owner words
constexpr std::uint64_t kMaxObjectBytes = 16 * 1024;
constexpr std::uint64_t kWindowBefore = 512, kWindowAfter = 2048;  // around a pointer that is no slab object
constexpr std::uint64_t kMaxScanBytes = 32ull << 20;
constexpr std::uint64_t kMaxFunctionBytes = 64 * 1024;
constexpr std::size_t kMaxFlowSites = 256;  // lock calls of one function whose paths are searched

struct OwnerHit {
  std::uint64_t address;  // of the word equal to the dying task (| flag bits)
  std::string where;
};

// A lock a call site on the crashing stack names.
struct SiteLock {
  std::uint64_t address;
  const LockFunction* function;
  std::string where;
  std::size_t frame = 0;    // the frame of the path whose function made the call
  std::uint64_t call = 0;   // the call instruction
  // semaphore, socket: every path through its function to where the frame is passes an
  // acquisition with no release after it (held_by_flow)
  bool held_here = false;
};

class Search {
 public:
  Search(const Kernel& kernel, const CrashAnalysis& a)
      : kernel_(kernel), mem_(kernel.memory()), types_(kernel.types()), a_(a) {}

  LockSearch run();

 private:
  // Where data may be: not the kernel's or a module's code and read-only data.
  bool data_pointer(std::uint64_t v) const;
  std::string describe(std::uint64_t address) const;
  // Reads [start, start + size) a page at a time; unreadable pages are skipped.
  template <typename F>
  void for_each_word(std::uint64_t start, std::uint64_t size, F&& visit);
  void scan_for_owner(std::uint64_t start, std::uint64_t size, const std::string& where,
                      std::vector<std::uint64_t>* pointers);
  std::pair<std::uint64_t, std::uint64_t> object_around(std::uint64_t v, std::string* what) const;
  void frame_values();
  void call_sites();
  void classify_owner_hits();
  void waiters();
  void account_spinlocks();
  std::uint32_t spin_wait_lock(std::uint32_t held, std::uint32_t explained);
  std::optional<std::uint32_t> interrupted_level(std::string* why) const;
  HeldLock& add(std::uint64_t address, LockType type, const std::string& found_by);
  int preempt_step(const std::vector<std::uint8_t>& code, std::uint64_t base, const Instruction& i) const;
  std::uint32_t count() const { return a_.preempt_count - a_.detector_levels; }
  bool plausible_ring(std::uint64_t head) const;
  bool small_words(std::uint64_t lock_word, std::uint64_t osq) const;

  const Kernel& kernel_;
  const KernelMemory& mem_;
  const TypeInfo& types_;
  const CrashAnalysis& a_;
  LockSearch out_;
  std::optional<SlabLookup> slab_;
  std::vector<std::pair<std::uint64_t, std::uint64_t>> code_ranges_;  // kernel and module code and rodata
  std::uint64_t task_size_ = 0;
  std::optional<std::uint64_t> preempt_offset_;  // the per-CPU offset of __preempt_count
  bool sleeping_locks_ = true;   // false in softirq context: a callback cannot hold them
  std::size_t first_ = 0, last_ = 0;  // the frames of the crashing path, fault to entry
  std::uint64_t stack_low_ = 0, stack_high_ = 0;
  std::vector<std::uint64_t> values_;
  std::vector<OwnerHit> owner_hits_;
  std::vector<SiteLock> site_locks_;
  // release_sock() and up() calls reached on the path (the lock, when it can be named): an
  // acquisition before one of them may have been given up.
  struct OwnerlessRelease {
    std::size_t frame;
    std::uint64_t call;
    std::optional<std::uint64_t> lock;
    LockType type;
  };
  std::vector<OwnerlessRelease> ownerless_releases_;
  std::vector<std::string> unnamed_spin_sites_;  // reached spinlock calls whose lock is unknown
  std::vector<std::string> unnamed_socket_sites_;  // reached lock_sock() calls whose socket is unknown
  // Inline preempt_disable()s (incl %gs:__preempt_count) reached on the path and not yet undone
  // by a preempt_enable() before the frame's position: levels of the count that are no lock.
  std::uint32_t preempt_sections_ = 0;
  std::map<std::uint64_t, std::size_t> index_;  // lock address → out_.locks
  std::uint64_t scanned_ = 0;
  std::size_t objects_ = 0, site_count_ = 0, rejected_hits_ = 0;
};

bool Search::data_pointer(std::uint64_t v) const {
  if (!kernel_pointer(v) || (v & 7)) return false;
  for (const auto& [lo, hi] : code_ranges_)
    if (v >= lo && v < hi) return false;
  return true;
}

std::string Search::describe(std::uint64_t address) const {
  if (slab_)
    if (auto o = slab_->object_at(address)) return fmt::format("{} object+{:#x}", o->cache, address - o->start);
  if (address >= stack_low_ && address < stack_high_) return "on the crashing stack";
  if (auto s = kernel_.symbols().lookup(address)) {
    std::string name = s->address == address ? std::string(s->name()) : fmt::format("{}+{:#x}", s->name(), address - s->address);
    return s->module().empty() ? name : fmt::format("{} [{}]", name, s->module());
  }
  return fmt::format("{:#x}", address);
}

template <typename F>
void Search::for_each_word(std::uint64_t start, std::uint64_t size, F&& visit) {
  std::vector<std::uint64_t> words(kPage / 8);
  std::uint64_t at = start & ~7ull, end = start + size;
  while (at < end && scanned_ < kMaxScanBytes) {
    std::uint64_t chunk = std::min<std::uint64_t>(end - at, kPage - (at % kPage));
    chunk &= ~7ull;
    if (chunk == 0) break;
    try {
      mem_.read(at, std::as_writable_bytes(std::span(words.data(), chunk / 8)));
      for (std::uint64_t i = 0; i < chunk / 8; ++i) visit(at + 8 * i, words[i]);
    } catch (const MemoryFault&) {
      // Unmapped (a hole in a module's data, a freed page): nothing to find there.
    }
    scanned_ += chunk;
    at += chunk;
  }
}

void Search::scan_for_owner(std::uint64_t start, std::uint64_t size, const std::string& where,
                            std::vector<std::uint64_t>* pointers) {
  for_each_word(start, size, [&](std::uint64_t address, std::uint64_t word) {
    if (sleeping_locks_ && owner_task(word) == a_.task && word != 0 &&
        !(address >= a_.task && address < a_.task + task_size_))  // the task's own fields name it
      owner_hits_.push_back({address, where});
    if (pointers && data_pointer(word)) pointers->push_back(word);
  });
}

std::pair<std::uint64_t, std::uint64_t> Search::object_around(std::uint64_t v, std::string* what) const {
  if (slab_)
    if (auto o = slab_->object_at(v)) {
      *what = o->cache + " object";
      return {o->start, std::min(o->size, kMaxObjectBytes)};
    }
  std::uint64_t page = v & ~(kPage - 1);
  std::uint64_t lo = std::max(page, v >= kWindowBefore ? v - kWindowBefore : 0);
  std::uint64_t hi = std::min(page + kPage, v + kWindowAfter);
  *what = "memory around " + fmt::format("{:#x}", v);
  return {lo, hi - lo};
}

// Values the crashing path was working with: the registers at the fault and every stack slot
// from the fault's stack pointer up to the entry (callee-saved registers of outer frames are
// among them: their callees' prologues pushed them there).
void Search::frame_values() {
  const X86Registers& r = a_.fault_registers;
  std::set<std::uint64_t> seen;
  auto take = [&](std::uint64_t v) {
    if (values_.size() < kMaxValues && data_pointer(v) && seen.insert(v).second) values_.push_back(v);
  };
  for (std::uint64_t v : {r.rax, r.rbx, r.rcx, r.rdx, r.rsi, r.rdi, r.rbp, r.r8, r.r9, r.r10, r.r11, r.r12, r.r13,
                          r.r14, r.r15})
    take(v);
  for_each_word(stack_low_, stack_high_ - stack_low_, [&](std::uint64_t, std::uint64_t word) { take(word); });
}

void Search::call_sites() {
  const auto& frames = a_.backtrace.frames;
  const auto& symbols = kernel_.symbols();
  LockFunctions functions = LockFunctions::from(symbols);
  // The registers of each frame: all of them at the fault, the callee-saved ones further out
  // (undone frame by frame from where each prologue pushed them; unknown past a frame that
  // cannot be undone).
  std::vector<std::optional<X86Registers>> regs(frames.size());
  regs[first_] = a_.fault_registers;
  for (std::size_t k = first_; k < last_; ++k) {
    if (!regs[k] || frames[k + 1].regs) break;
    try {
      regs[k + 1] = return_from_frame(kernel_, a_.backtrace, k, *regs[k], k);
    } catch (const Error& e) {
      out_.notes.push_back(fmt::format("registers beyond frame {} are not known: {}", k, e.what()));
      break;
    } catch (const MemoryFault& e) {
      out_.notes.push_back(fmt::format("registers beyond frame {} are not known: {}", k, e.what()));
      break;
    }
  }
  std::set<std::pair<std::uint64_t, const LockFunction*>> seen;
  for (std::size_t k = first_; k <= last_ && k < frames.size(); ++k) {
    std::uint64_t pc = frames[k].pc;
    auto s = symbols.lookup(k == first_ ? pc : pc - 1);
    if (!s) continue;
    // A function's .cold part runs with its parent's frame: the parent's calls count too.
    std::vector<Symbol> parts{*s};
    if (auto dot = s->name().find(".cold"); dot != std::string::npos)
      if (auto parent = symbols.address_in(s->name().substr(0, dot), s->module()))
        if (auto p = symbols.lookup(*parent)) parts.push_back(*p);
    for (std::size_t part_index = 0; part_index < parts.size(); ++part_index) {
      const Symbol& part = parts[part_index];
      auto next = symbols.next_after(part);
      std::uint64_t size = std::min<std::uint64_t>(next ? next->address - part.address : kPage, kMaxFunctionBytes);
      std::vector<std::uint8_t> code(size);
      try {
        mem_.read(part.address, std::as_writable_bytes(std::span(code)));
      } catch (const MemoryFault&) {
        continue;
      }
      std::vector<Instruction> insns = decode_code(code, part.address);
      // Where the frame is in this code: the faulting instruction, or the call it made.
      ControlFlow flow(insns, [&](std::uint64_t target) {
        auto t = symbols.lookup(target);
        return !t || t->name().find(".cold") == std::string::npos;
      });
      int here = part_index != 0 ? -1 : k == first_ ? flow.at(pc) : flow.ending_at(pc);
      std::vector<bool> before_here = flow.can_reach(here);
      bool socket_held = held_by_flow(code, part.address, insns, flow, here, functions, LockType::socket);
      bool semaphore_held = held_by_flow(code, part.address, insns, flow, here, functions, LockType::semaphore);
      if (preempt_offset_) {
        int net = 0;
        for (const auto& i : insns) {
          if (part_index == 0 && i.address >= pc) break;
          net += preempt_step(code, part.address, i);
        }
        if (net > 0) preempt_sections_ += static_cast<std::uint32_t>(net);
      }
      // A lock call whose lock cannot be named: a spinlock's is then told by the preemption
      // count alone; a release of one may have given up any.
      auto unnamed = [&](const LockCallSite& site) {
        if (site.function->release) ownerless_releases_.push_back({k, site.call, std::nullopt, site.function->type});
        if (site.function->type == LockType::spinlock || site.function->type == LockType::rwlock)
          unnamed_spin_sites_.push_back(fmt::format("{} in {}", site.function->name, symbols.describe(site.call)));
        if (site.function->type == LockType::socket && !site.function->release && sleeping_locks_)
          unnamed_socket_sites_.push_back(fmt::format("{} in {}", site.function->name, symbols.describe(site.call)));
      };
      std::vector<LockCallSite> unfollowed;
      // A semaphore or socket call counts only on a path to where the frame is (a large
      // setsockopt switch locks the socket in many cases).
      auto off_path = [&](const LockCallSite& site) {
        int at = flow.at(site.call);
        return ownerless(site.function->type) && here >= 0 && at >= 0 && !before_here[static_cast<std::size_t>(at)];
      };
      std::size_t flow_sites = 0;
      for (const auto& site : find_lock_calls(insns, functions, &unfollowed)) {
        ++site_count_;
        if (part_index == 0 && site.call >= pc) continue;  // not reached yet
        // The call the frame is in: an acquisition not complete yet (a task stuck waiting for it).
        if (part_index == 0 && k != first_ && here >= 0 && flow.at(site.call) == here && !site.function->release) continue;
        if (off_path(site)) continue;
        std::uint64_t lock = 0;
        if (site.absolute) {
          lock = *site.absolute;
        } else {
          bool known = regs[k] && (k == first_ || callee_saved(site.base));
          if (!known) {
            unnamed(site);
            continue;
          }
          // The base must still hold what it held at the call: nothing on a path from the call
          // to where the frame is now may write it (where the paths are not all known, nothing
          // between the two in address order).
          // (A forward search per call: at most kMaxFlowSites of them in one function.)
          bool rewritten = part_index != 0 || here < 0;
          if (!rewritten && (!flow.exact() || ++flow_sites > kMaxFlowSites)) {
            rewritten = std::any_of(insns.begin(), insns.end(), [&](const Instruction& i) {
              return i.address > site.call && i.address < pc && (i.writes & (1u << site.base));
            });
          } else if (!rewritten) {
            std::vector<bool> after_site = flow.reachable_from(flow.at(site.call));
            for (std::size_t i = 0; i < insns.size() && !rewritten; ++i)
              rewritten = after_site[i] && before_here[i] && static_cast<int>(i) != here &&
                          (insns[i].writes & (1u << site.base));
          }
          if (rewritten) {
            unnamed(site);
            continue;
          }
          lock = *regs[k]->field(register_name(site.base)) + static_cast<std::uint64_t>(site.displacement);
        }
        if (site.function->release) {
          ownerless_releases_.push_back({k, site.call, lock, site.function->type});
          continue;
        }
        if (!data_pointer(lock & ~7ull) || !seen.insert({lock, site.function}).second) continue;
        site_locks_.push_back({lock, site.function,
                               fmt::format("a call to {} in {}", site.function->name, symbols.describe(site.call)), k,
                               site.call, site.function->type == LockType::socket ? socket_held : semaphore_held});
      }
      for (const auto& site : unfollowed) {
        ++site_count_;
        if ((part_index != 0 || site.call < pc) && !off_path(site)) {
          unnamed(site);
        }
      }
    }
  }
}

// +1 for an inline preempt_disable() (incl %gs:__preempt_count), -1 for a preempt_enable()
// (decl), 0 for anything else. Modules address the per-CPU variable RIP-relative, the kernel
// absolutely (a zero-based per-CPU offset).
int Search::preempt_step(const std::vector<std::uint8_t>& code, std::uint64_t base, const Instruction& i) const {
  std::uint64_t at = i.address - base;
  if (at + i.size > code.size() || i.size < 7 || code[at] != 0x65 || code[at + 1] != 0xff) return 0;
  std::uint8_t modrm = code[at + 2];
  int reg = (modrm >> 3) & 7;
  if (reg > 1) return 0;  // /0 inc, /1 dec
  std::int32_t disp = 0;
  std::uint64_t target = 0;
  if ((modrm & 0xc7) == 0x05 && i.size == 7) {
    std::memcpy(&disp, &code[at + 3], 4);
    target = i.address + 7 + static_cast<std::uint64_t>(static_cast<std::int64_t>(disp));
  } else if ((modrm & 0xc7) == 0x04 && code[at + 3] == 0x25 && i.size == 8) {
    std::memcpy(&disp, &code[at + 4], 4);
    target = static_cast<std::uint64_t>(static_cast<std::int64_t>(disp));
  } else {
    return 0;
  }
  if (target != *preempt_offset_) return 0;
  return reg == 0 ? 1 : -1;
}

HeldLock& Search::add(std::uint64_t address, LockType type, const std::string& found_by) {
  if (auto it = index_.find(address); it != index_.end()) {
    HeldLock& h = out_.locks[it->second];
    if (h.type != type)
      out_.unexplained.push_back(fmt::format("the lock at {:#x} ({}) is taken both as a {} and as a {}", address,
                                             h.name, to_string(h.type), to_string(type)));
    return h;
  }
  index_[address] = out_.locks.size();
  HeldLock h;
  h.address = address;
  h.type = type;
  h.name = describe(address);
  h.found_by = found_by;
  out_.locks.push_back(std::move(h));
  return out_.locks.back();
}

bool Search::plausible_ring(std::uint64_t head) const {
  std::uint64_t next = mem_.read_u64(head), prev = mem_.read_u64(head + 8);
  if (!kernel_pointer(next) || !kernel_pointer(prev)) return false;
  return mem_.read_u64(next + 8) == head && mem_.read_u64(prev) == head;
}

// A lock's internal spinlock (free, or held for a moment) and its optimistic-spin queue tail
// (a CPU number + 1): small numbers. A word equal to the task that is no lock's owner rarely
// sits before two such words and a well-formed list.
bool Search::small_words(std::uint64_t lock_word, std::uint64_t osq) const {
  auto l = mem_.read_value<std::uint32_t>(lock_word), o = mem_.read_value<std::uint32_t>(osq);
  return (l & 0xff) <= 1 && o <= kMaxVcpus;
}

void Search::classify_owner_hits() {
  std::uint64_t m_owner = types_.offset_of("mutex", "owner"), m_list = types_.offset_of("mutex", "wait_list"),
                m_lock = types_.offset_of("mutex", "wait_lock"), m_osq = types_.offset_of("mutex", "osq");
  std::uint64_t r_owner = types_.offset_of("rw_semaphore", "owner"), r_count = types_.offset_of("rw_semaphore", "count"),
                r_list = types_.offset_of("rw_semaphore", "wait_list"), r_lock = types_.offset_of("rw_semaphore", "wait_lock"),
                r_osq = types_.offset_of("rw_semaphore", "osq");
  std::set<std::uint64_t> done;
  for (const auto& hit : owner_hits_) {
    if (!done.insert(hit.address).second) continue;
    try {
      std::uint64_t word = mem_.read_u64(hit.address);
      std::uint64_t m = hit.address - m_owner, s = hit.address - r_owner;
      // A list's waiters and the owner's flag bits agree, except for the moment a waiter is added
      // or removed, which happens under the lock's own wait_lock.
      auto consistent = [&](bool flagged, std::uint64_t list, std::uint64_t wait_lock) {
        bool waiting = mem_.read_u64(list) != list;
        return flagged == waiting || (mem_.read_value<std::uint32_t>(wait_lock) & 0xff) != 0;
      };
      bool as_mutex = plausible_ring(m + m_list) && small_words(m + m_lock, m + m_osq) &&
                      consistent((word & 7) != 0, m + m_list, m + m_lock);
      std::uint64_t count = mem_.read_u64(s + r_count);
      bool writer = (count & kRwsemWriterLocked) && (count >> 8) == 0 && !(word & kRwsemReaderOwned);
      bool reader = !(count & kRwsemWriterLocked) && (count >> 8) > 0 && (count >> 8) < (1ull << 40) &&
                    (word & kRwsemReaderOwned);
      bool as_rwsem = (writer || reader) && plausible_ring(s + r_list) && small_words(s + r_lock, s + r_osq) &&
                      consistent((count & kRwsemFlagWaiters) != 0, s + r_list, s + r_lock);
      // What the code itself says the lock is, if a call site or a waiter named it.
      std::optional<LockType> told;
      bool read_site = false;
      for (const auto& site : site_locks_) {
        if (site.address == m && site.function->type == LockType::mutex) told = LockType::mutex;
        if (site.address == s && site.function->type == LockType::rwsem) {
          told = LockType::rwsem;
          read_site = read_site || site.function->read;
        }
      }
      if (auto it = index_.find(m); it != index_.end() && out_.locks[it->second].type == LockType::mutex) told = LockType::mutex;
      if (auto it = index_.find(s); it != index_.end() && out_.locks[it->second].type == LockType::rwsem) told = LockType::rwsem;
      if (!told && as_mutex && as_rwsem) {
        out_.unexplained.push_back(fmt::format("a lock at {} is held by the crashing task, but whether it is a mutex "
                                               "or an rwsem cannot be told", describe(hit.address)));
        continue;
      }
      LockType type = told ? *told : as_mutex ? LockType::mutex : LockType::rwsem;
      if ((type == LockType::mutex && !as_mutex) || (type == LockType::rwsem && !as_rwsem)) {
        ++rejected_hits_;  // a word that names the task, not a lock's owner
        continue;
      }
      if (type == LockType::rwsem && reader && !read_site) {
        // Readers leave their task in the owner word as a hint, and do not clear it when they
        // release: the crashing task may be a reader that is gone, another reader the holder.
        out_.unexplained.push_back(fmt::format("rwsem {} is held for reading and the crashing task read it last, but "
                                               "no call on the crashing path took it: who holds it cannot be told",
                                               describe(s)));
        continue;
      }
      HeldLock& h = add(type == LockType::mutex ? m : s, type, "its owner word, in " + hit.where);
      h.word = word;
      if (type == LockType::rwsem) {
        h.count = count;
        h.read = reader;
      }
      h.ours = true;
      if (h.read) h.note = "held for reading; the owner word names the last reader, the crashing task";
    } catch (const MemoryFault&) {
      ++rejected_hits_;
    }
  }
}

void Search::waiters() {
  LockWaiters w = find_lock_waiters(kernel_);
  for (const auto& p : w.problems) out_.notes.push_back("waiters: " + p);
  std::size_t on_ours = 0;
  for (const auto& waiter : w.waiters) {
    LockType type = waiter.kind == SleepingLock::mutex ? LockType::mutex
                    : waiter.kind == SleepingLock::rwsem ? LockType::rwsem : LockType::semaphore;
    auto it = index_.find(waiter.lock);
    bool owned = sleeping_locks_ && type != LockType::semaphore && owner_task(waiter.owner) == a_.task;
    bool read_owned = owned && type == LockType::rwsem && (waiter.owner & kRwsemReaderOwned);
    if (read_owned) {
      bool read_site = std::any_of(site_locks_.begin(), site_locks_.end(), [&](const SiteLock& site) {
        return site.address == waiter.lock && site.function->type == LockType::rwsem && site.function->read;
      });
      if (!read_site) {
        out_.unexplained.push_back(fmt::format("rwsem {} is held for reading and the crashing task read it last, but no "
                                               "call on the crashing path took it: who holds it cannot be told "
                                               "(pid {} waits for it)", describe(waiter.lock), waiter.pid));
        owned = false;
      }
    }
    if (it == index_.end() && !owned) continue;
    HeldLock& h = add(waiter.lock, type, fmt::format("pid {} ({}) waits for it in {}", waiter.pid, waiter.comm, waiter.waits_in));
    if (owned && !h.ours) {
      h.ours = true;
      h.word = waiter.owner;
      if (type == LockType::rwsem) {
        h.count = mem_.read_u64(waiter.lock + types_.offset_of("rw_semaphore", "count"));
        h.read = read_owned;
      }
    }
    h.waiters.push_back(waiter.pid);
    ++on_ours;
  }
  out_.stats["waiters"] = {{"tasks", w.tasks}, {"asleep_on_locks", w.waiters.size()}, {"on_these_locks", on_ours}};
}

// The preemption level of the code an interrupt-time callback interrupted: 0 for user space
// and for ksoftirqd (which runs softirqs with preemption enabled); unknown for kernel code (it
// may be in any number of spinlocks or preempt_disable() sections of its own, which it releases
// itself once the callback has ended and the interrupt returns).
std::optional<std::uint32_t> Search::interrupted_level(std::string* why) const {
  const auto& frames = a_.backtrace.frames;
  const auto& symbols = kernel_.symbols();
  for (std::size_t k = last_ + 1; k < frames.size(); ++k) {
    if (frames[k].regs) {
      std::uint64_t cs = 0;
      try {
        cs = mem_.read_u64(frames[k].regs + types_.offset_of("pt_regs", "cs"));
      } catch (const MemoryFault&) {
        *why = "the interrupt's saved registers are unreadable";
        return std::nullopt;
      }
      *why = fmt::format("the interrupt came in {}", (cs & 3) ? "user space" : symbols.describe(frames[k].pc));
      if (cs & 3) return 0;
      return std::nullopt;
    }
    if (auto s = symbols.lookup(frames[k].pc - 1); s && s->module().empty() && s->name() == "run_ksoftirqd") {
      *why = "ksoftirqd ran it";
      return 0;
    }
    // Softirqs run by local_bh_enable() in process context (napi_schedule() or netif_rx() under
    // local_bh_disable(), as drivers do): that task's own level, plus the one level
    // __local_bh_enable_ip() keeps while it runs them — not an interrupt from user space, even
    // though the syscall's saved registers further out say user mode.
    if (auto s = symbols.lookup(frames[k].pc - 1);
        s && s->module().empty() && (s->name() == "__local_bh_enable_ip" || s->name() == "do_softirq")) {
      *why = "it ran when " + (k + 1 < frames.size() ? symbols.describe(frames[k + 1].pc) : std::string("a task")) +
             " enabled bottom halves";
      return std::nullopt;
    }
  }
  *why = "the code it interrupted is not known";
  return std::nullopt;
}

// The spinlock a stuck task waits for (spin_wait.h), unless the path's own lock calls found it
// held already (taken twice on one path): held by the task itself, or by code that cannot be
// named (a reason not to resume). What it adds to the locks found on the crashing CPU.
std::uint32_t Search::spin_wait_lock(std::uint32_t held, std::uint32_t explained) {
  const SpinWait& w = *a_.spin_wait;
  auto it = index_.find(w.lock);
  if (it != index_.end() && out_.locks[it->second].ours) return 0;
  std::string why;
  auto delta = spin_wait_holder(w, a_.pid, held > explained ? held - explained : 0, &why);
  if (!delta) {
    out_.unexplained.push_back(fmt::format("the stuck task waits for spinlock {}, and who holds it cannot be told: {}",
                                           describe(w.lock), why));
    return 0;
  }
  HeldLock& h = add(w.lock, LockType::spinlock, "the spinlock the stuck task waits for (" + w.polled_by + ")");
  h.word = w.word;
  h.ours = true;
  h.preempt_delta = *delta;
  h.note = *delta ? "taken by the same task in an earlier call and never released: its CPU still holds it"
                  : "taken by the same task, which then slept holding it (the kernel reported it scheduling while "
                    "atomic): no CPU holds it";
  out_.notes.push_back(fmt::format("spinlock {} that the stuck task waits for is its own: {} ({}; {})",
                                   describe(w.lock), h.note, w.others, w.log_evidence));
  return *delta;
}

// Spinlocks and rwlocks have no owner: the crashing CPU holds those its preemption count
// says, and the ones found must be exactly that many.
void Search::account_spinlocks() {
  std::uint32_t held = count() & kPreemptMask;
  std::uint32_t found = 0, bh = 0;
  for (const auto& h : out_.locks)
    if (h.ours && (h.type == LockType::spinlock || h.type == LockType::rwlock)) {
      ++found;
      if (h.preempt_delta & kSoftirqMask) ++bh;
    }
  // Levels that are no lock: the idle task always runs with preemption disabled (its count
  // starts at PREEMPT_DISABLED), and report_bug() disables preemption while it reports a WARN()
  // (warn_rcu_enter(), in Linux 6.1 since 6.1.2x), which is where panic_on_warn panics.
  std::uint32_t idle = a_.pid == 0 ? 1 : 0, warn = 0;
  const auto& frames = a_.backtrace.frames;
  for (std::size_t k = 0; k < first_ && k < frames.size(); ++k)
    if (auto s = kernel_.symbols().lookup(frames[k].pc - 1); s && s->module().empty() && s->name() == "report_bug")
      warn = 1;
  out_.stats["preemption"] = {{"count", fmt::format("{:#x}", a_.preempt_count)}, {"spinlocks_held", held},
                              {"spinlocks_found", found}, {"idle_task", idle}, {"warn_report", warn},
                              {"preempt_disabled", preempt_sections_}};
  if (a_.detector_levels) out_.stats["preemption"]["detector"] = fmt::format("{:#x}", a_.detector_levels);
  if (a_.context == "softirq" || a_.context == "hardirq") {
    // The count is the interrupted code's level plus the callback's. When the first is not
    // known, what the callback's own frames took must be fully named instead: every spinlock
    // call they reached, found held or free by its lock word.
    std::string why;
    auto outer = interrupted_level(&why);
    out_.stats["preemption"]["interrupted"] = why;
    if (!outer) {
      if (found > held) {
        out_.unexplained.push_back(fmt::format(
            "the crashing CPU's preemption count ({:#x}) says it holds {} spinlock{}, fewer than the {} found on the "
            "callback's stack", a_.preempt_count, held, held == 1 ? "" : "s", found));
      } else if (!unnamed_spin_sites_.empty()) {
        out_.unexplained.push_back(fmt::format(
            "the callback reached {} spinlock call{} whose lock cannot be named ({}), and the preemption count "
            "({:#x}) cannot tell it from the interrupted code's own level ({})",
            unnamed_spin_sites_.size(), unnamed_spin_sites_.size() == 1 ? "" : "s", unnamed_spin_sites_.front(),
            a_.preempt_count, why));
      } else {
        out_.stats["preemption"]["interrupted_level"] = held - found;
      }
      return;
    }
  }
  held = held >= idle ? held - idle : held;
  if (a_.spin_wait) found += spin_wait_lock(held, found + warn + preempt_sections_);
  // What is not a lock: the WARN() report's level, the path's own preempt_disable() sections.
  // The spinlocks found must account for everything else.
  if (found > held || held - found > warn + preempt_sections_)
    out_.unexplained.push_back(fmt::format(
        "the crashing CPU's preemption count ({:#x}) says it holds {} spinlock{} or preemption-disabled section{}, "
        "{} {} found on its stack and {} preempt_disable() section{} reached", count(), held, held == 1 ? "" : "s",
        held == 1 ? "" : "s", found, found == 1 ? "was" : "were", preempt_sections_, preempt_sections_ == 1 ? "" : "s"));
  if (a_.context == "process" && bh * 0x200 > (count() & kSoftirqMask))
    out_.unexplained.push_back("spinlocks taken with bottom halves disabled do not match the preemption count");
}

LockSearch Search::run() {
  auto t0 = std::chrono::steady_clock::now();
  const auto& frames = a_.backtrace.frames;
  if (a_.fault_frame < 0 || static_cast<std::size_t>(a_.fault_frame) >= frames.size()) return out_;
  std::string why;
  slab_ = SlabLookup::from_kernel(kernel_, &why);
  if (!slab_) out_.notes.push_back("slab objects cannot be told apart (" + why + "): pointers are searched around");
  task_size_ = types_.struct_size("task_struct").value_or(0);
  preempt_offset_ = kernel_.symbols().percpu_offset("__preempt_count");
  sleeping_locks_ = a_.context == "process" || a_.context == "kernel-thread";
  const auto& symbols = kernel_.symbols();
  auto range = [&](const char* lo, const char* hi) {
    auto l = symbols.address_of(lo), h = symbols.address_of(hi);
    if (l && h && *l < *h) code_ranges_.emplace_back(*l, *h);
  };
  range("_stext", "_etext");
  range("__start_rodata", "__end_rodata");
  ModuleList modules;
  try {
    modules = read_modules(kernel_);
  } catch (const std::exception& e) {
    out_.notes.push_back(std::string("the module list is unreadable: ") + e.what());
  }
  for (const auto& m : modules.modules) {
    if (m.text_size) code_ranges_.emplace_back(m.base, m.base + m.text_size);
    if (!m.rodata.empty()) code_ranges_.emplace_back(m.rodata.begin, m.rodata.end);
  }

  // The crashing path: from the fault to the kernel entry (process context) or to the
  // dispatcher that called the callback; its stack from the fault's stack pointer up.
  first_ = static_cast<std::size_t>(a_.fault_frame);
  last_ = frames.size() - 1;
  if (a_.context != "process" && a_.outer_module_frame >= 0)
    last_ = std::min(last_, static_cast<std::size_t>(a_.outer_module_frame) + 1);
  stack_low_ = a_.fault_registers.rsp;
  // A stack overflow's stack pointer lies in the guard page below the task's stack.
  if (a_.kind == "stack-overflow" && a_.task_stack && stack_low_ < a_.task_stack) stack_low_ = a_.task_stack;
  stack_high_ = a_.context == "process" && a_.task_stack ? a_.task_stack + kThreadSize : frames[last_].sp + 8;
  if (stack_high_ <= stack_low_ || stack_high_ - stack_low_ > kThreadSize) stack_high_ = stack_low_ + kThreadSize;
  stack_high_ = std::min(stack_high_, (stack_low_ | (kThreadSize - 1)) + 1);

  frame_values();
  call_sites();

  // Owner words: in the objects the path worked on (and the objects they point to), on its
  // stack, in every module's data and in the kernel's.
  if (sleeping_locks_) {
    std::vector<std::uint64_t> second;
    std::set<std::uint64_t> objects;
    for (std::uint64_t v : values_) {
      if (objects.size() >= kMaxObjects) break;
      std::string what;
      auto [start, size] = object_around(v, &what);
      if (!objects.insert(start).second) continue;
      scan_for_owner(start, size, what + " (a value of the crashing path)", &second);
    }
    for (std::uint64_t v : second) {
      if (objects.size() >= kMaxObjects + kMaxSecondObjects) break;
      std::string what;
      auto [start, size] = object_around(v, &what);
      if (!objects.insert(start).second) continue;
      scan_for_owner(start, size, what + " (pointed to by an object of the crashing path)", nullptr);
    }
    objects_ = objects.size();
    scan_for_owner(stack_low_, stack_high_ - stack_low_, "the crashing stack", nullptr);
    for (const auto& m : modules.modules)
      for (const auto& r : {m.ro_after_init, m.data})
        if (!r.empty() && r.size() <= (64ull << 20))
          scan_for_owner(r.begin, r.size(), "the data of module " + m.name, nullptr);
    if (auto lo = symbols.address_of("_sdata"), hi = symbols.address_of("_edata"); lo && hi && *lo < *hi)
      scan_for_owner(*lo, *hi - *lo, "the kernel's data", nullptr);
  }

  // What the call sites name, by the lock's own state.
  std::uint64_t sem_count = types_.offset_of("semaphore", "count");
  for (const auto& site : site_locks_) {
    if (a_.asleep && (site.function->type == LockType::spinlock || site.function->type == LockType::rwlock)) continue;
    try {
      switch (site.function->type) {
        case LockType::spinlock: {
          auto v = mem_.read_value<std::uint32_t>(site.address);
          if ((v & 0xff) != 1) break;  // _Q_LOCKED_VAL
          HeldLock& h = add(site.address, LockType::spinlock, site.where);
          h.word = v;
          h.ours = true;
          h.preempt_delta = std::max(h.preempt_delta, site.function->preempt_delta);
          break;
        }
        case LockType::rwlock: {
          auto v = mem_.read_value<std::uint32_t>(site.address);
          bool writer = (v & 0xff) == kQrwWriteLocked, readers = (v >> 9) > 0;
          if (site.function->read ? !readers : !writer) break;
          HeldLock& h = add(site.address, LockType::rwlock, site.where);
          h.word = v;
          h.read = site.function->read;
          h.ours = true;
          h.preempt_delta = std::max(h.preempt_delta, site.function->preempt_delta);
          break;
        }
        case LockType::semaphore:
        case LockType::socket: {
          // Neither records its holder. It is the crashing task's if the control flow says so:
          // every path through the function to where its frame is passes an acquisition (a
          // conditional one only on its success side) with no release after it, no function
          // further in released it, and the function takes no other lock of that kind.
          if (!sleeping_locks_ || site.function->release) break;
          bool semaphore = site.function->type == LockType::semaphore;
          const char* what = semaphore ? "semaphore" : "socket";
          std::uint64_t word = semaphore ? mem_.read_value<std::uint32_t>(site.address + sem_count)
                                         : static_cast<std::uint64_t>(mem_.read_value<std::int32_t>(
                                               site.address + types_.offset_of("sock", "sk_lock.owned")));
          bool given_up = std::any_of(ownerless_releases_.begin(), ownerless_releases_.end(), [&](const OwnerlessRelease& r) {
            return r.type == site.function->type && r.frame < site.frame && (!r.lock || *r.lock == site.address);
          });
          bool others = std::any_of(site_locks_.begin(), site_locks_.end(), [&](const SiteLock& o) {
            return o.frame == site.frame && o.function->type == site.function->type && o.address != site.address;
          });
          bool ours = site.held_here && !given_up && !others;
          // A socket not owned, a semaphore with units left, and the flow not saying it is held:
          // nothing to tell (it was released, or another holder's units are not this crash's).
          bool locked = semaphore ? word == 0 : word == 1;
          if (!ours && !locked) break;
          if (!semaphore && !locked) break;  // flow says held, but nobody owns it: released already
          HeldLock& h = add(site.address, site.function->type, site.where);
          h.word = word;
          if (ours) {
            h.ours = true;
            break;
          }
          out_.unexplained.push_back(fmt::format(
              "{} {} was taken on the crashing path and is held, but the path {}: who holds it cannot be told", what,
              h.name, others ? fmt::format("takes other {}s too", what) : given_up ? std::string("released it after")
              : fmt::format("may not hold it where it is (a path there without the acquisition, or with its release "
                            "after it)")));
          break;
        }
        case LockType::mutex:
        case LockType::rwsem:
          break;  // by their owner words, below
      }
    } catch (const MemoryFault&) {
    }
  }
  // A lock_sock() reached whose socket cannot be named: it may be held, and nothing else tells.
  for (const auto& where : unnamed_socket_sites_)
    out_.unexplained.push_back("a socket lock taken on the crashing path (" + where + ") cannot be named: whether it is "
                               "held cannot be told");
  waiters();
  classify_owner_hits();
  if (!a_.asleep) account_spinlocks();

  double ms = ms_since(t0);
  out_.stats["values"] = values_.size();
  out_.path_values = values_;
  out_.stats["objects"] = objects_;
  out_.stats["call_sites"] = site_count_;
  out_.stats["owner_words"] = owner_hits_.size();
  out_.stats["owner_words_not_locks"] = rejected_hits_;
  out_.stats["bytes_searched"] = scanned_;
  out_.ms = ms;
  if (scanned_ >= kMaxScanBytes) out_.notes.push_back("the search stopped at its byte limit");
  return out_;
}

}  // namespace

nlohmann::json HeldLock::to_json() const {
  std::string kind = to_string(type);
  if (type == LockType::rwlock || type == LockType::rwsem) kind += read ? " (read)" : " (write)";
  nlohmann::json j = {{"kind", kind}, {"address", fmt::format("{:#x}", address)}, {"name", name},
                      {"word", fmt::format("{:#x}", word)}, {"ours", ours}, {"found_by", found_by},
                      {"waiters", waiters}};
  if (type == LockType::rwsem) j["count"] = fmt::format("{:#x}", count);
  if (preempt_delta) j["preempt_delta"] = fmt::format("{:#x}", preempt_delta);
  if (!note.empty()) j["note"] = note;
  return j;
}

LockSearch find_held_locks(const Kernel& kernel, const CrashAnalysis& analysis) {
  try {
    return Search(kernel, analysis).run();
  } catch (const Error& e) {
    LockSearch s;
    s.unexplained.push_back(std::string("the held locks cannot be searched: ") + e.what());
    return s;
  } catch (const MemoryFault& e) {
    LockSearch s;
    s.unexplained.push_back(std::string("the held locks cannot be searched: ") + e.what());
    return s;
  }
}

}  // namespace immortal::repair
