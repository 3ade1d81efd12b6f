#include "x86_64/prologue.h"

namespace immortal {

namespace {

const char* const kRegisters[16] = {"rax", "rcx", "rdx", "rbx", "rsp", "rbp", "rsi", "rdi",
                                    "r8",  "r9",  "r10", "r11", "r12", "r13", "r14", "r15"};
constexpr std::size_t kMaxInstructions = 24;

}  // namespace

Prologue decode_prologue(std::span<const std::uint8_t> code) {
  Prologue p;
  std::size_t i = 0;
  auto at = [&](std::size_t k) -> int { return i + k < code.size() ? code[i + k] : -1; };
  // endbr64 (IBT kernels)
  if (at(0) == 0xf3 && at(1) == 0x0f && at(2) == 0x1e && at(3) == 0xfa) i += 4;
  // The ftrace site: the kernel's 5-byte nop, or the unpatched call __fentry__.
  if ((at(0) == 0x0f && at(1) == 0x1f && at(2) == 0x44 && at(3) == 0x00 && at(4) == 0x00) || at(0) == 0xe8) i += 5;
  for (std::size_t n = 0; n < kMaxInstructions && i < code.size(); ++n) {
    int b0 = at(0), b1 = at(1), b2 = at(2);
    if (b0 >= 0x50 && b0 <= 0x57) {  // push r64
      p.pushes.push_back({kRegisters[b0 - 0x50], static_cast<std::uint32_t>(i)});
      i += 1;
    } else if (b0 == 0x41 && b1 >= 0x50 && b1 <= 0x57) {  // push r8–r15
      p.pushes.push_back({kRegisters[8 + b1 - 0x50], static_cast<std::uint32_t>(i)});
      i += 2;
    } else if (b0 == 0x48 && b1 == 0x89 && b2 == 0xe5) {  // mov %rsp,%rbp
      p.frame_pointer = !p.pushes.empty() && p.pushes.back().name == "rbp";
      i += 3;
    } else if ((b0 == 0x48 || b0 == 0x49 || b0 == 0x4c || b0 == 0x4d || b0 == 0x40 || b0 == 0x41 ||
                b0 == 0x44 || b0 == 0x45) && b1 == 0x89 && b2 >= 0xc0 && (b2 & 7) != 4) {
      i += 3;  // mov reg,reg (not into rsp/r12 — r12 needs REX.B and is fine, rsp is not)
    } else if (b0 == 0x89 && b1 >= 0xc0 && (b1 & 7) != 4) {
      i += 2;  // mov r32,r32
    } else if (b0 == 0x48 && b1 == 0x83 && b2 == 0xec && at(3) >= 0) {  // sub $imm8,%rsp
      p.stack_adjust = static_cast<std::uint8_t>(at(3));
      p.adjust_offset = static_cast<std::uint32_t>(i);
      i += 4;
      break;
    } else if (b0 == 0x48 && b1 == 0x81 && b2 == 0xec && at(6) >= 0) {  // sub $imm32,%rsp
      std::uint32_t v = static_cast<std::uint32_t>(at(3)) | static_cast<std::uint32_t>(at(4)) << 8 |
                        static_cast<std::uint32_t>(at(5)) << 16 | static_cast<std::uint32_t>(at(6)) << 24;
      p.stack_adjust = v;
      p.adjust_offset = static_cast<std::uint32_t>(i);
      i += 7;
      break;
    } else {
      break;
    }
  }
  p.length = static_cast<std::uint32_t>(i);
  return p;
}

std::uint64_t frame_depth_at(const Prologue& prologue, std::uint32_t at) {
  std::uint64_t depth = 0;
  for (const auto& push : prologue.pushes)
    if (push.offset < at) depth += 8;
  if (prologue.stack_adjust && prologue.adjust_offset < at) depth += prologue.stack_adjust;
  return depth;
}

}  // namespace immortal
