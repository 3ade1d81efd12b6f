// The pieces of recovery that are pure logic: prologue decoding (which registers a function
// saved, where), finding a module's locks in its code, the recovery budget, the CLI's limit
// syntax. The whole path runs against real guests in tests/integration/recovery_test.cc.
#include "base/error.h"
#include "engine/module_locks.h"
#include "engine/repair_plan.h"
#include "recovery/recovery_policy.h"
#include "support/fake_kernel.h"
#include "x86_64/prologue.h"

#include <catch2/catch.hpp>

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

TEST_CASE("prologue: anything else ends the decoding; empty and truncated code are fine", "[recovery]") {
  const std::uint8_t code[] = {0x0f, 0x1f, 0x44, 0x00, 0x00, 0x85, 0xff, 0x53};  // test %edi,%edi first
  CHECK(decode_prologue(code).pushes.empty());
  CHECK(decode_prologue({}).pushes.empty());
  const std::uint8_t cut[] = {0x48, 0x81, 0xec, 0x00};
  CHECK(decode_prologue(cut).stack_adjust == 0);
}

TEST_CASE("module locks: constant lock addresses passed to lock functions are found", "[recovery]") {
  repair::LockFunctions f;
  f.targets = {{0x1000, "_raw_spin_lock"}, {0x2000, "mutex_lock"}, {0x3000, "_raw_spin_lock_bh"}};
  std::uint64_t base = 0x10000;
  std::vector<std::uint8_t> code(64, 0x90);
  auto call_at = [&](std::size_t at, std::uint8_t form, std::int32_t operand, std::uint64_t target) {
    code[at] = 0x48;
    code[at + 1] = form == 0 ? 0xc7 : 0x8d;
    code[at + 2] = form == 0 ? 0xc7 : 0x3d;
    std::memcpy(&code[at + 3], &operand, 4);
    code[at + 7] = 0xe8;
    std::int32_t rel = static_cast<std::int32_t>(target - (base + at + 12));
    std::memcpy(&code[at + 8], &rel, 4);
  };
  call_at(0, 0, -0x100, 0x1000);   // mov $0xffffffffffffff00,%rdi; call _raw_spin_lock
  call_at(12, 1, 0x40, 0x2000);    // lea 0x40(%rip),%rdi; call mutex_lock
  call_at(24, 0, -0x100, 0x3000);  // the same spinlock with the _bh variant
  call_at(36, 0, -0x200, 0x4000);  // not a lock function
  auto locks = repair::find_lock_calls(code, base, f);
  REQUIRE(locks.size() == 2);
  CHECK(locks[0].address == base + 12 + 7 + 0x40);
  CHECK(locks[0].kind == "mutex");
  CHECK(locks[1].address == 0xffffffffffffff00ull);
  CHECK(locks[1].kind == "spinlock");
  CHECK(locks[1].preempt_delta == -1);  // two variants: the count it added is not known
}

TEST_CASE("module locks: hostile code is scanned without reading past its end", "[recovery]") {
  repair::LockFunctions f;
  f.targets = {{0x1000, "_raw_spin_lock"}};
  std::vector<std::uint8_t> code = {0x48, 0xc7, 0xc7, 0, 0, 0, 0, 0xe8, 0, 0};
  CHECK(repair::find_lock_calls(code, 0, f).empty());
  std::vector<std::uint8_t> noise(4096);
  for (std::size_t i = 0; i < noise.size(); ++i) noise[i] = static_cast<std::uint8_t>(i * 131 + 7);
  CHECK_NOTHROW(repair::find_lock_calls(noise, 0xffffffffc0000000ull, f));
}

TEST_CASE("quarantine patch: returns -EIO in eight bytes", "[recovery]") {
  auto p = repair::quarantine_patch();
  REQUIRE(p.size() == 8);
  CHECK(p.back() == 0xc3);  // ret
  std::int32_t imm;
  std::memcpy(&imm, &p[3], 4);
  CHECK(imm == -5);  // -EIO
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
