// The pieces of recovery that are pure logic: prologue decoding (which registers a function
// saved, where), finding a module's locks in its code, the recovery budget, the CLI's limit
// syntax. The whole path runs against real guests in tests/integration/recovery_test.cc.
#include "base/error.h"
#include "engine/lock_calls.h"
#include "engine/repair_plan.h"
#include "engine/spin_wait.h"
#include "recovery/recovery_policy.h"
#include "support/fake_kernel.h"
#include "x86_64/code_decoder.h"
#include "x86_64/control_flow.h"
#include "x86_64/prologue.h"

#include <catch2/catch.hpp>

#include <algorithm>
#include <cstring>

using namespace immortal;

TEST_CASE("prologue: pushes after the ftrace site, in order, with the stack adjustment", "[recovery]") {
  // immortal_fault_write as GCC 12 built it: nop5; push %r12; push %rbp; push %rbx; sub $0x50,%rsp
  const std::uint8_t code[] = {0x0f, 0x1f, 0x44, 0x00, 0x00, 0x41, 0x54, 0x55, 0x53, 0x48, 0x83, 0xec, 0x50, 0x65};
  Prologue p = decode_prologue(code);
  REQUIRE(p.pushes.size() == 3);
  CHECK(p.pushes[0].name == "r12");
  CHECK(p.pushes[1].name == "rbp");
  CHECK(p.pushes[2].name == "rbx");
  CHECK(p.pushes[0].offset == 5);
  CHECK(p.stack_adjust == 0x50);
  CHECK_FALSE(p.frame_pointer);
  CHECK(frame_depth_at(p, 0) == 0);        // at entry nothing is saved yet
  CHECK(frame_depth_at(p, 8) == 16);       // two pushes done
  CHECK(frame_depth_at(p, 100) == 24 + 0x50);
}

TEST_CASE("prologue: frame pointer, moves between pushes, endbr64 and sub imm32", "[recovery]") {
  // endbr64; call __fentry__; push %rbp; mov %rsp,%rbp; push %r14; mov %rdi,%rbx? (no: rbx is
  // not saved yet — GCC never does that) mov %rdi,%r14 after its push; push %rbx; sub $0x1000,%rsp
  const std::uint8_t code[] = {0xf3, 0x0f, 0x1e, 0xfa, 0xe8, 1,    2,    3,    4,    0x55, 0x48, 0x89, 0xe5, 0x41,
                               0x56, 0x49, 0x89, 0xfe, 0x53, 0x48, 0x81, 0xec, 0x00, 0x10, 0x00, 0x00, 0x90};
  Prologue p = decode_prologue(code);
  REQUIRE(p.pushes.size() == 3);
  CHECK(p.frame_pointer);
  CHECK(p.pushes[1].name == "r14");
  CHECK(p.pushes[2].name == "rbx");
  CHECK(p.stack_adjust == 0x1000);
}

TEST_CASE("prologue: instructions GCC interleaves with the pushes are stepped over", "[recovery]") {
  // A work function as Debian's gcc built it: push %rbp; lea -0x38(%rdi),%rbp; push %rbx; …
  const std::uint8_t work[] = {0x0f, 0x1f, 0x44, 0x00, 0x00, 0x55, 0x48, 0x8d, 0x6f, 0xc8, 0x53, 0x48, 0x83, 0xec, 0x08};
  Prologue w = decode_prologue(work);
  REQUIRE(w.pushes.size() == 2);
  CHECK(w.pushes[0].name == "rbp");
  CHECK(w.pushes[1].name == "rbx");
  CHECK(w.pushes[1].offset == 10);
  CHECK(w.stack_adjust == 8);
  // immortal_realdev's realdev_cmd_mutex: push %r12; lea 0x58(%rdi),%r12; push %rbp; mov %esi,%ebp;
  // push %rbx; mov %rdi,%rbx; mov %r12,%rdi; call …
  const std::uint8_t cmd[] = {0xe8, 0, 0, 0, 0, 0x41, 0x54, 0x4c, 0x8d, 0x67, 0x58, 0x55, 0x89, 0xf5, 0x53,
                              0x48, 0x89, 0xfb, 0x4c, 0x89, 0xe7, 0xe8, 0, 0, 0, 0};
  Prologue c = decode_prologue(cmd);
  REQUIRE(c.pushes.size() == 3);
  CHECK(c.pushes[2].name == "rbx");
  CHECK(frame_depth_at(c, 0x1a) == 24);
  // A stack-protector load: mov %gs:0x28,%rax between the pushes.
  const std::uint8_t canary[] = {0x53, 0x65, 0x48, 0x8b, 0x04, 0x25, 0x28, 0x00, 0x00, 0x00, 0x41, 0x54};
  CHECK(decode_prologue(canary).pushes.size() == 2);
  // Linux 6.1's watchdog_timer_fn: a per-CPU load and a compare with an immediate between them.
  const std::uint8_t watchdog[] = {0xe8, 0x8b, 0x0d, 0xed, 0xff, 0x41, 0x55, 0x31, 0xc0, 0x41, 0x54, 0x65, 0x4c, 0x8b,
                                   0x25, 0xd5, 0xba, 0xe8, 0x7e, 0x48, 0x83, 0x3d, 0x5d, 0x7b, 0xa9, 0x01, 0x00, 0x55,
                                   0x8b, 0x2d, 0x1e, 0x77, 0xa9, 0x01, 0x53, 0x75, 0x0b};
  Prologue wd = decode_prologue(watchdog);
  REQUIRE(wd.pushes.size() == 4);
  CHECK(wd.pushes[3].name == "rbx");
  CHECK(wd.pushes[3].offset == 34);
  // …but not an and of %rsp (a stack realignment).
  const std::uint8_t realign[] = {0x55, 0x48, 0x83, 0xe4, 0xf0, 0x53};
  CHECK(decode_prologue(realign).pushes.size() == 1);
}

TEST_CASE("prologue: anything else ends the decoding; empty and truncated code are fine", "[recovery]") {
  const std::uint8_t code[] = {0x0f, 0x1f, 0x44, 0x00, 0x00, 0x74, 0x02, 0x53};  // je first: shrink-wrapped
  CHECK(decode_prologue(code).pushes.empty());
  const std::uint8_t into_rsp[] = {0x55, 0x48, 0x8b, 0xe7, 0x53};  // mov %rdi,%rsp ends it
  CHECK(decode_prologue(into_rsp).pushes.size() == 1);
  CHECK(decode_prologue({}).pushes.empty());
  const std::uint8_t cut[] = {0x48, 0x81, 0xec, 0x00};
  CHECK(decode_prologue(cut).stack_adjust == 0);
}

namespace {
// A symbol table with the kernel's lock functions at fixed addresses (kallsyms text).
SymbolTable lock_symbols() {
  return SymbolTable::from_kallsyms("ffffffff81001000 T _raw_spin_lock\n"
                                    "ffffffff81002000 T mutex_lock\n"
                                    "ffffffff81003000 T _raw_spin_lock_bh\n"
                                    "ffffffff81004000 T down_write\n"
                                    "ffffffff81005000 T printk\n");
}

// Appends `call target` (e8 rel32) to code that starts at base.
void append_call(std::vector<std::uint8_t>& code, std::uint64_t base, std::uint64_t target) {
  code.push_back(0xe8);
  auto rel = static_cast<std::int32_t>(target - (base + code.size() + 4));
  std::uint8_t b[4];
  std::memcpy(b, &rel, 4);
  code.insert(code.end(), b, b + 4);
}
}  // namespace

TEST_CASE("lock calls: how the lock reached %rdi is decoded for every shape GCC emits", "[recovery]") {
  auto f = repair::LockFunctions::from(lock_symbols());
  REQUIRE(f.targets.size() == 4);
  const std::uint64_t base = 0xffffffffc0000000ull;
  std::vector<std::uint8_t> code;
  auto put = [&](std::initializer_list<std::uint8_t> bytes, std::uint64_t target) {
    code.insert(code.end(), bytes);
    append_call(code, base, target);
  };
  put({0x48, 0xc7, 0xc7, 0x00, 0xff, 0xff, 0xff}, 0xffffffff81001000);  // mov $-0x100,%rdi; spin_lock
  put({0x48, 0x8d, 0x3d, 0x40, 0x00, 0x00, 0x00}, 0xffffffff81002000);  // lea 0x40(%rip),%rdi; mutex_lock
  put({0x48, 0x8d, 0x7b, 0x10}, 0xffffffff81003000);                    // lea 0x10(%rbx),%rdi; spin_lock_bh
  put({0x49, 0x8d, 0x7c, 0x24, 0x08}, 0xffffffff81004000);              // lea 0x8(%r12),%rdi; down_write
  put({0x49, 0x8d, 0xbd, 0x00, 0x01, 0x00, 0x00}, 0xffffffff81002000);  // lea 0x100(%r13),%rdi
  put({0x4c, 0x89, 0xf7}, 0xffffffff81001000);                          // mov %r14,%rdi
  put({0x48, 0x8b, 0xfd}, 0xffffffff81001000);                          // mov %rbp,%rdi (8b form)
  put({0x48, 0x89, 0xc6}, 0xffffffff81001000);                          // mov %rax,%rsi: not the argument
  put({0x48, 0xc7, 0xc7, 0x00, 0xff, 0xff, 0xff}, 0xffffffff81005000);  // not a lock function
  auto sites = repair::find_lock_calls(code, base, f);
  REQUIRE(sites.size() == 7);
  CHECK(*sites[0].absolute == 0xffffffffffffff00ull);
  CHECK(sites[0].function->type == repair::LockType::spinlock);
  CHECK(*sites[1].absolute == base + 12 + 7 + 0x40);
  CHECK(sites[1].function->type == repair::LockType::mutex);
  CHECK(std::string(repair::register_name(sites[2].base)) == "rbx");
  CHECK(sites[2].displacement == 0x10);
  CHECK(sites[2].function->preempt_delta == 0x201);  // SOFTIRQ_LOCK_OFFSET with PREEMPT_COUNT
  CHECK(std::string(repair::register_name(sites[3].base)) == "r12");
  CHECK(sites[3].displacement == 8);
  CHECK(sites[3].function->type == repair::LockType::rwsem);
  CHECK(std::string(repair::register_name(sites[4].base)) == "r13");
  CHECK(sites[4].displacement == 0x100);
  CHECK(std::string(repair::register_name(sites[5].base)) == "r14");
  CHECK(std::string(repair::register_name(sites[6].base)) == "rbp");
  CHECK(sites[6].displacement == 0);
  CHECK(repair::callee_saved(3));
  CHECK_FALSE(repair::callee_saved(7));
}

TEST_CASE("lock calls: the argument is followed back over instructions that leave %rdi alone", "[recovery]") {
  auto f = repair::LockFunctions::from(lock_symbols());
  const std::uint64_t base = 0xffffffffc0000000ull;
  std::vector<std::uint8_t> code = {0x48, 0x89, 0xef,   // mov %rbp,%rdi
                                    0x40, 0x84, 0xf6,   // test %sil,%sil
                                    0x74, 0x05};        // je +5 (over the call)
  append_call(code, base, 0xffffffff81001000);          // call _raw_spin_lock
  code.insert(code.end(), {0x4c, 0x89, 0xe7,            // mov %r12,%rdi
                           0x53,                        // push %rbx
                           0xbb, 0xfc, 0xff, 0xff, 0xff});  // mov $-4,%ebx
  append_call(code, base, 0xffffffff81004000);          // call down_write
  auto sites = repair::find_lock_calls(code, base, f);
  REQUIRE(sites.size() == 2);
  CHECK(std::string(repair::register_name(sites[0].base)) == "rbp");
  CHECK(std::string(repair::register_name(sites[1].base)) == "r12");

  // A jump lands between the set-up and the call: on that path %rdi is the caller's, unknown.
  std::vector<std::uint8_t> joined = {0x74, 0x03,              // je +3 (onto the call)
                                      0x48, 0x89, 0xef};       // mov %rbp,%rdi
  append_call(joined, base, 0xffffffff81001000);
  CHECK(repair::find_lock_calls(joined, base, f).empty());
  // Both paths set %rdi the same way before they meet at the call: known.
  std::vector<std::uint8_t> both = {0x48, 0x89, 0xef,          // mov %rbp,%rdi
                                    0x74, 0x02,                // je +2 (onto the call)
                                    0x31, 0xc0};               // xor %eax,%eax
  append_call(both, base, 0xffffffff81001000);
  REQUIRE(repair::find_lock_calls(both, base, f).size() == 1);
  // …differently: unknown.
  std::vector<std::uint8_t> differ = {0x48, 0x89, 0xef,        // mov %rbp,%rdi
                                      0x74, 0x03,              // je +3 (onto the call)
                                      0x48, 0x89, 0xdf};       // mov %rbx,%rdi
  append_call(differ, base, 0xffffffff81001000);
  CHECK(repair::find_lock_calls(differ, base, f).empty());
  // A call in between clobbers %rdi.
  std::vector<std::uint8_t> clobbered = {0x48, 0x89, 0xef};
  append_call(clobbered, base, 0xffffffff81005000);
  append_call(clobbered, base, 0xffffffff81001000);
  CHECK(repair::find_lock_calls(clobbered, base, f).empty());
}

TEST_CASE("lock calls: hostile code is scanned without reading past its end", "[recovery]") {
  auto f = repair::LockFunctions::from(lock_symbols());
  std::vector<std::uint8_t> code = {0x48, 0xc7, 0xc7, 0, 0, 0, 0, 0xe8, 0, 0};
  CHECK(repair::find_lock_calls(code, 0, f).empty());
  std::vector<std::uint8_t> noise(4096);
  for (std::size_t i = 0; i < noise.size(); ++i) noise[i] = static_cast<std::uint8_t>(i * 131 + 7);
  CHECK_NOTHROW(repair::find_lock_calls(noise, 0xffffffffc0000000ull, f));
  std::vector<std::uint8_t> only_call;
  append_call(only_call, 0, 0xffffffff81001000);  // a call with nothing before it
  CHECK(repair::find_lock_calls(only_call, 0, f).empty());
}

TEST_CASE("quarantine patch: the return value follows the function's type, through the return thunk", "[recovery]") {
  // Without a return thunk: mov $-5,%rax; ret.
  auto p = repair::quarantine_patch(ReturnType::signed_integer, 0x1000, std::nullopt);
  REQUIRE(p.size() == 8);
  CHECK(p.back() == 0xc3);
  std::int32_t imm;
  std::memcpy(&imm, &p[3], 4);
  CHECK(imm == -5);  // -EIO
  CHECK(repair::quarantine_patch(ReturnType::unknown, 0x1000, std::nullopt) == p);  // no BTF: -EIO as before
  // A pointer, a bool, irqreturn_t, void: 0 (NULL, false, IRQ_NONE, nothing).
  for (auto t : {ReturnType::pointer, ReturnType::boolean, ReturnType::irqreturn, ReturnType::none, ReturnType::enumeration}) {
    auto z = repair::quarantine_patch(t, 0x1000, std::nullopt);
    CHECK(z == std::vector<std::uint8_t>{0x31, 0xc0, 0xc3});  // xor %eax,%eax; ret
  }
  // With CONFIG_RETHUNK: jmp __x86_return_thunk, relative to where the patch lies.
  auto t = repair::quarantine_patch(ReturnType::pointer, 0xffffffffc0001009ull, 0xffffffff81e01d30ull);
  REQUIRE(t.size() == 7);
  CHECK(t[2] == 0xe9);
  std::int32_t rel;
  std::memcpy(&rel, &t[3], 4);
  CHECK(0xffffffffc0001009ull + 2 + 5 + static_cast<std::uint64_t>(static_cast<std::int64_t>(rel)) == 0xffffffff81e01d30ull);
  // A NAPI poll: xor %esi,%esi; call napi_complete_done; xor %eax,%eax; jmp __x86_return_thunk.
  auto n = repair::quarantine_patch(ReturnType::unsigned_integer, 0xffffffffc0001009ull, 0xffffffff81e01d30ull,
                                    0xffffffff817e0280ull);
  REQUIRE(n.size() == 14);
  CHECK(n[0] == 0x31);
  CHECK(n[1] == 0xf6);
  CHECK(n[2] == 0xe8);
  std::memcpy(&rel, &n[3], 4);
  CHECK(0xffffffffc0001009ull + 7 + static_cast<std::uint64_t>(static_cast<std::int64_t>(rel)) == 0xffffffff817e0280ull);
  CHECK(n[7] == 0x31);
  CHECK(n[9] == 0xe9);
  std::memcpy(&rel, &n[10], 4);
  CHECK(0xffffffffc0001009ull + 14 + static_cast<std::uint64_t>(static_cast<std::int64_t>(rel)) == 0xffffffff81e01d30ull);
}

TEST_CASE("recovery budget: a sliding window of recoveries", "[recovery]") {
  vmm::RecoveryPolicy policy;
  policy.set_limit("2/60");
  CHECK(policy.max_recoveries == 2);
  CHECK(policy.window == std::chrono::seconds(60));
  vmm::RecoveryBudget budget(policy);
  auto t = Clock::now();
  CHECK(budget.available(t));
  budget.spend(t);
  budget.spend(t + std::chrono::seconds(1));
  CHECK_FALSE(budget.available(t + std::chrono::seconds(2)));
  CHECK(budget.available(t + std::chrono::seconds(62)));  // the first one left the window
}

TEST_CASE("recovery limit: malformed values are usage errors", "[recovery]") {
  vmm::RecoveryPolicy policy;
  for (const char* bad : {"", "5", "5/", "/60", "a/60", "5/0", "-1/60", "5/60s", "5/99999999"}) {
    INFO(bad);
    try {
      policy.set_limit(bad);
      FAIL("accepted");
    } catch (const Error& e) {
      CHECK(e.code() == ExitCode::usage);
    }
  }
}

namespace {

// A synthetic kernel with two module functions and a stack: `callback` (push r12; push rbx;
// sub $0x10,%rsp) called `helper` (push rbp), which faulted. Returning from `callback` must
// give back the dispatcher's callee-saved registers from where both prologues saved them.
struct FrameFixture {
  test::VectorMemory ram{1 << 22};
  std::unique_ptr<Kernel> kernel;
  Backtrace bt;
  X86Registers fault;
  static constexpr std::uint64_t kCallback = 0x100000, kHelper = 0x100100, kStack = 0x200000;
  std::uint64_t s2 = test::kva(kStack + 0x800);  // the dispatcher's stack pointer after the call
  std::uint64_t s1 = s2 - 8 - 32;                // callback: 2 pushes + 0x10
  std::uint64_t s0 = s1 - 8 - 8;                 // helper: 1 push

  FrameFixture() {
    test::map_kernel_image(ram);
    const std::uint8_t callback[] = {0x0f, 0x1f, 0x44, 0x00, 0x00, 0x41, 0x54, 0x53, 0x48, 0x83, 0xec, 0x10, 0xe8};
    const std::uint8_t helper[] = {0x0f, 0x1f, 0x44, 0x00, 0x00, 0x55, 0xc7, 0x04, 0x25};
    ram.write(kCallback, std::as_bytes(std::span(callback)));
    ram.write(kHelper, std::as_bytes(std::span(helper)));
    auto at = [&](std::uint64_t va, std::uint64_t v) { ram.put<std::uint64_t>(va - test::kKernelBase, v); };
    at(s2 - 8, 0xffffffff80300042);   // return into the dispatcher
    at(s2 - 16, 0x1212);              // callback's saved r12
    at(s2 - 24, 0xb0b0);              // callback's saved rbx
    at(s1 - 8, test::kva(kCallback) + 0x11);  // return into callback, after its call
    at(s1 - 16, 0xbbbb);              // helper's saved rbp
    kernel = Kernel::assemble(ram, KernelLayout{0x1000}, SymbolTable::from_kallsyms(
        "ffffffff80100000 t callback\t[drv]\nffffffff80100100 t helper\t[drv]\nffffffff80100200 t other\t[drv]\n"
        "ffffffff80300000 T dispatcher\n"), test::linux_like_types(), "test");
    fault.rip = test::kva(kHelper) + 6;
    fault.rsp = s0;
    fault.rbx = 1;  // values the helper had; what it did not save stays as it is
    fault.rbp = 2;
    fault.r12 = 3;
    bt.frames = {{fault.rip, "helper", true, s0, 0x1234}, {test::kva(kCallback) + 0x11, "callback", true, s1, 0},
                 {0xffffffff80300042, "dispatcher", true, s2, 0}};
  }
};

}  // namespace

TEST_CASE("return from frame: callee-saved registers come back from each prologue's slots", "[recovery]") {
  FrameFixture f;
  X86Registers after = repair::return_from_frame(*f.kernel, f.bt, 0, f.fault, 1);
  CHECK(after.rip == 0xffffffff80300042);
  CHECK(after.rsp == f.s2);
  CHECK(after.rbp == 0xbbbb);
  CHECK(after.r12 == 0x1212);
  CHECK(after.rbx == 0xb0b0);
}

TEST_CASE("return from frame: a stack that does not match the prologues is refused", "[recovery]") {
  FrameFixture f;
  f.bt.frames[1].sp += 8;  // ORC says the callback's frame is deeper than its prologue saved
  try {
    repair::return_from_frame(*f.kernel, f.bt, 0, f.fault, 1);
    FAIL("accepted");
  } catch (const Error& e) {
    CHECK(e.code() == ExitCode::bad_input);
    CHECK_THAT(e.what(), Catch::Contains("does not match"));
  }
  CHECK_THROWS_AS(repair::return_from_frame(*f.kernel, f.bt, 0, f.fault, 2), Error);  // no caller above
}

TEST_CASE("control flow: paths follow jumps, not addresses; unknown jumps make every answer cautious", "[recovery]") {
  const std::uint64_t base = 0xffffffffc0000000ull;
  // The shape of __dev_mc_add: the lock, a branch to the call the frame is in, and the other
  // branch's epilogue (pop %r13) between the two in address order but on no path between them.
  std::vector<std::uint8_t> code = {0x41, 0x55,                                // 0x00 push %r13
                                    0x4c, 0x8d, 0xaf, 0x68, 0x02, 0x00, 0x00,  // 0x02 lea 0x268(%rdi),%r13
                                    0x4c, 0x89, 0xef};                         // 0x09 mov %r13,%rdi
  append_call(code, base, 0xffffffff81001000);                                 // 0x0c call lock
  code.insert(code.end(), {0x85, 0xc0, 0x74, 0x05,                             // 0x11 test; je 0x1a
                           0x41, 0x5d, 0xc3, 0x90, 0x90});                     // 0x15 pop %r13; ret; nops
  append_call(code, base, 0xffffffff81005000);                                 // 0x1a call other (the frame)
  code.insert(code.end(), {0xeb, 0xf4});                                       // 0x1f jmp 0x15
  auto insns = decode_code(code, base);
  ControlFlow flow(insns);
  CHECK(flow.exact());
  int site = flow.at(base + 0x0c), here = flow.ending_at(base + 0x1f), pop = flow.at(base + 0x15);
  REQUIRE(site >= 0);
  REQUIRE(here == flow.at(base + 0x1a));
  REQUIRE(pop >= 0);
  CHECK(flow.reachable_from(site)[static_cast<std::size_t>(pop)]);   // after the lock…
  CHECK_FALSE(flow.can_reach(here)[static_cast<std::size_t>(pop)]);  // …but never before the frame's call
  CHECK(flow.can_reach(here)[static_cast<std::size_t>(site)]);
  auto is_site = [&](const Instruction& i) { return i.address == base + 0x0c; };
  CHECK(flow.can_reach(here)[0]);                 // from the entry
  CHECK(flow.reachable_from(here)[static_cast<std::size_t>(pop)]);  // the jmp back
  CHECK_FALSE(flow.reachable_from(pop)[static_cast<std::size_t>(here)]);  // ret ends the path
  auto open = flow.can_reach(here, is_site);      // paths to the frame that do not pass the lock
  CHECK_FALSE(open[0]);                           // every path from the entry passes it
  CHECK(open[static_cast<std::size_t>(flow.at(base + 0x11))]);  // after it
  CHECK_FALSE(open[static_cast<std::size_t>(site)]);

  // An indirect jump could go anywhere: every question gets the cautious answer.
  auto indirect = code;
  indirect.insert(indirect.end(), {0xff, 0xe0});  // jmp *%rax
  auto more = decode_code(indirect, base);
  ControlFlow loose(more);
  CHECK_FALSE(loose.exact());
  CHECK(loose.can_reach(here)[static_cast<std::size_t>(pop)]);
  // A jump out of the code that may come back (into a .cold part) too.
  auto cold = code;
  cold.insert(cold.end(), {0xe9, 0x00, 0x10, 0x00, 0x00});  // jmp out
  auto with_cold = decode_code(cold, base);
  ControlFlow tail(with_cold, [](std::uint64_t) { return true; }), back(with_cold, [](std::uint64_t) { return false; });
  CHECK(tail.exact());
  CHECK_FALSE(back.exact());
}

TEST_CASE("spin wait: the one word a stuck loop polls, from the loop's own instructions", "[recovery]") {
  const std::uint64_t base = 0xffffffff81a5a14bull;
  // Debian 6.1's native_queued_spin_lock_slowpath from +0xb: the test-and-set loop a guest
  // without paravirtual spinlocks spins in (virt_spin_lock), polling (%rbx).
  std::vector<std::uint8_t> code = {
      0x48, 0x89, 0xfb,                    // 0x14b mov %rdi,%rbx
      0x66, 0x90,                          // 0x14e xchg %ax,%ax (the static key)
      0xba, 0x01, 0x00, 0x00, 0x00,        // 0x150 mov $1,%edx
      0x8b, 0x03,                          // 0x155 mov (%rbx),%eax
      0x85, 0xc0, 0x75, 0x13,              // 0x157 test; jne 0x16e
      0xf0, 0x0f, 0xb1, 0x13,              // 0x15b lock cmpxchg %edx,(%rbx)
      0x85, 0xc0, 0x75, 0xf2,              // 0x15f test; jne 0x155
      0x5b, 0x5d, 0x41, 0x5c, 0x41, 0x5d,  // 0x163 pops
      0xe9, 0xc2, 0x7b, 0x3a, 0x00,        // 0x169 jmp __x86_return_thunk
      0xf3, 0x90,                          // 0x16e pause
      0xeb, 0xe3};                         // 0x170 jmp 0x155
  auto insns = decode_code(code, base);
  ControlFlow flow(insns);
  REQUIRE(flow.exact());
  int here = flow.at(0xffffffff81a5a170ull);
  REQUIRE(here >= 0);
  auto loop = flow.loop_through(here);
  CHECK(loop[static_cast<std::size_t>(flow.at(0xffffffff81a5a155ull))]);
  CHECK(loop[static_cast<std::size_t>(flow.at(0xffffffff81a5a15bull))]);  // the cmpxchg that would take it
  CHECK_FALSE(loop[static_cast<std::size_t>(flow.at(0xffffffff81a5a150ull))]);  // before the loop
  CHECK_FALSE(loop[static_cast<std::size_t>(flow.at(0xffffffff81a5a163ull))]);  // its way out
  const Instruction& poll = insns[static_cast<std::size_t>(flow.at(0xffffffff81a5a155ull))];
  REQUIRE(poll.memory);
  CHECK(poll.memory->base == 3);  // %rbx
  CHECK(poll.memory->read);
  CHECK_FALSE(poll.memory->write);
  const Instruction& cmpxchg = insns[static_cast<std::size_t>(flow.at(0xffffffff81a5a15bull))];
  REQUIRE(cmpxchg.memory);
  CHECK(cmpxchg.memory->base == 3);  // the same word
  // An instruction no path comes back to is in no loop.
  auto none = flow.loop_through(flow.at(0xffffffff81a5a150ull));
  CHECK(std::none_of(none.begin(), none.end(), [](bool b) { return b; }));
  // A per-CPU access (%gs) and an indexed one are not described as a polled word.
  auto gs = decode_code(std::vector<std::uint8_t>{0x65, 0x8b, 0x05, 0x10, 0x00, 0x00, 0x00}, base);  // mov %gs:0x10(%rip),%eax
  REQUIRE(gs.size() == 1);
  CHECK_FALSE(gs[0].memory);
  CHECK(gs[0].other_memory);
  auto indexed = decode_code(std::vector<std::uint8_t>{0x8b, 0x04, 0x8b}, base);  // mov (%rbx,%rcx,4),%eax
  REQUIRE(indexed.size() == 1);
  CHECK(indexed[0].other_memory);
}

TEST_CASE("spin wait: the kernel's reports of a task sleeping or dying with a spinlock held name it", "[recovery]") {
  CHECK(repair::left_holding_pid("BUG: scheduling while atomic: immortal-victim/141/0x00000002") == 141);
  CHECK(repair::left_holding_pid("BUG: scheduling while atomic: a/b c/7/0x00000001") == 7);  // a comm with '/'
  CHECK(repair::left_holding_pid("note: immortal-victim[114] exited with preempt_count 2") == 114);
  CHECK(repair::left_holding_pid("note: a[b] c[9] exited with preempt_count 1") == 9);
  CHECK_FALSE(repair::left_holding_pid("lkdtm: Performing direct entry SPINLOCKUP"));
  CHECK_FALSE(repair::left_holding_pid("BUG: scheduling while atomic: x/notapid/0x1"));
  CHECK_FALSE(repair::left_holding_pid("BUG: scheduling while atomic: x/99999999999999/0x1"));
  CHECK_FALSE(repair::left_holding_pid("note: x[] exited with preempt_count 1"));
  CHECK_FALSE(repair::left_holding_pid("BUG: scheduling while atomic: "));
}

TEST_CASE("spin wait: the lock's holder is the stuck task only when nothing else can hold it", "[recovery]") {
  repair::SpinWait w;
  w.others_clear = true;
  w.left_holding = std::vector<int>{};
  std::string why;
  // Its CPU holds one level nothing on the stack explains: the lock it took in an earlier call.
  CHECK(repair::spin_wait_holder(w, 100, 1, &why) == 1u);
  // It slept holding it (reported), which reset its count: nothing to take off.
  w.left_holding = std::vector<int>{100};
  CHECK(repair::spin_wait_holder(w, 100, 0, &why) == 0u);
  // Another task reported sleeping or dying with a spinlock held: it may be the holder.
  w.left_holding = std::vector<int>{100, 42};
  CHECK_FALSE(repair::spin_wait_holder(w, 100, 1, &why));
  CHECK_THAT(why, Catch::Contains("42"));
  // Nothing explains the lock: no level left over, no report.
  w.left_holding = std::vector<int>{};
  CHECK_FALSE(repair::spin_wait_holder(w, 100, 0, &why));
  CHECK_FALSE(repair::spin_wait_holder(w, 100, 2, &why));
  // Another CPU at a raised preemption level, or a log that cannot rule anyone out.
  w.others_clear = false;
  w.others = "CPU 1 runs pid 7 with preemption count 0x1: it may hold the lock";
  CHECK_FALSE(repair::spin_wait_holder(w, 100, 1, &why));
  CHECK(why == w.others);
  w.others_clear = true;
  w.left_holding.reset();
  CHECK_FALSE(repair::spin_wait_holder(w, 100, 1, &why));
  CHECK_THAT(why, Catch::Contains("cannot be ruled out"));
}
