#include "x86_64/prologue.h"

#include <optional>

namespace immortal {

namespace {

const char* const kRegisters[16] = {"rax", "rcx", "rdx", "rbx", "rsp", "rbp", "rsi", "rdi",
                                    "r8",  "r9",  "r10", "r11", "r12", "r13", "r14", "r15"};
constexpr std::size_t kMaxInstructions = 32;

// Bytes of a ModRM byte with its SIB and displacement at code[at], 0 if cut short.
std::size_t modrm_length(std::span<const std::uint8_t> code, std::size_t at) {
  if (at >= code.size()) return 0;
  std::uint8_t modrm = code[at], mod = modrm >> 6, rm = modrm & 7;
  std::size_t n = 1;
  if (mod != 3 && rm == 4) {  // SIB
    if (at + 1 >= code.size()) return 0;
    if (mod == 0 && (code[at + 1] & 7) == 5) n += 4;  // no base: disp32
    n += 1;
  }
  if (mod == 0 && rm == 5) n += 4;  // rip-relative
  if (mod == 1) n += 1;
  if (mod == 2) n += 4;
  return at + n <= code.size() ? n : 0;
}

// The length of an instruction that compilers mix into prologues and that leaves the stack
// pointer alone (moves, lea, ALU and compare forms, movzx/movsx, immediates to registers), or 0
// for anything else: a call, a jump, a write to %rsp, an instruction not listed.
std::size_t other_instruction(std::span<const std::uint8_t> code, std::size_t i) {
  std::size_t start = i;
  bool word = false;
  if (i < code.size() && code[i] == 0x65) ++i;  // %gs (per-CPU, canary)
  if (i < code.size() && code[i] == 0x66) word = true, ++i;  // operand size
  std::uint8_t rex = 0;
  if (i < code.size() && (code[i] & 0xf0) == 0x40) rex = code[i++];
  if (i >= code.size()) return 0;
  std::uint8_t op = code[i];
  bool rex_r = rex & 4, rex_b = rex & 1;
  auto modrm_at = [&](std::size_t at) -> std::optional<std::uint8_t> {
    return at < code.size() ? std::optional<std::uint8_t>(code[at]) : std::nullopt;
  };
  // reg ← r/m forms: the register field is written.
  auto writes_rsp_reg = [&](std::uint8_t modrm) { return !rex_r && ((modrm >> 3) & 7) == 4; };
  // r/m ← reg forms: the r/m operand is written when it is a register.
  auto writes_rsp_rm = [&](std::uint8_t modrm) { return (modrm >> 6) == 3 && !rex_b && (modrm & 7) == 4; };
  switch (op) {
    case 0x01: case 0x09: case 0x21: case 0x29: case 0x31: case 0x89:  // add/or/and/sub/xor/mov r/m, reg
    case 0x39: case 0x85: case 0x38: case 0x84: case 0x88: {             // cmp/test (no write), mov r/m8
      auto m = modrm_at(i + 1);
      if (!m || ((op == 0x01 || op == 0x09 || op == 0x21 || op == 0x29 || op == 0x31 || op == 0x89) && writes_rsp_rm(*m)))
        return 0;
      std::size_t n = modrm_length(code, i + 1);
      return n ? i + 1 + n - start : 0;
    }
    case 0x03: case 0x0b: case 0x23: case 0x2b: case 0x33: case 0x8b: case 0x8d: case 0x3b: case 0x8a: {
      auto m = modrm_at(i + 1);
      if (!m || (op != 0x3b && writes_rsp_reg(*m))) return 0;
      std::size_t n = modrm_length(code, i + 1);
      return n ? i + 1 + n - start : 0;
    }
    case 0x0f: {  // movzx, movsx
      if (i + 1 >= code.size()) return 0;
      std::uint8_t op2 = code[i + 1];
      if (op2 != 0xb6 && op2 != 0xb7 && op2 != 0xbe && op2 != 0xbf) return 0;
      auto m = modrm_at(i + 2);
      if (!m || writes_rsp_reg(*m)) return 0;
      std::size_t n = modrm_length(code, i + 2);
      return n ? i + 2 + n - start : 0;
    }
    case 0x80: case 0x81: case 0x83:  // add/or/adc/sbb/and/sub/xor/cmp $imm, r/m
    case 0xf6: case 0xf7: {           // test $imm, r/m (/0)
      auto m = modrm_at(i + 1);
      if (!m) return 0;
      int ext = (*m >> 3) & 7;
      if ((op == 0xf6 || op == 0xf7) ? ext != 0 : (ext != 7 && writes_rsp_rm(*m))) return 0;
      std::size_t n = modrm_length(code, i + 1);
      std::size_t imm = op == 0x80 || op == 0x83 || op == 0xf6 ? 1 : word ? 2 : 4;
      return n && i + 1 + n + imm <= code.size() ? i + 1 + n + imm - start : 0;
    }
    case 0xc7: {  // mov $imm32, r/m
      auto m = modrm_at(i + 1);
      if (!m || ((*m >> 3) & 7) != 0 || writes_rsp_rm(*m)) return 0;
      std::size_t n = modrm_length(code, i + 1);
      return n && i + 1 + n + 4 <= code.size() ? i + 1 + n + 4 - start : 0;
    }
    default:
      if (op >= 0xb8 && op <= 0xbf) {  // mov $imm, r
        if (!rex_b && op == 0xbc) return 0;
        std::size_t imm = (rex & 8) ? 8 : 4;
        return i + 1 + imm <= code.size() ? i + 1 + imm - start : 0;
      }
      if (op == 0x90) return i + 1 - start;  // nop
      return 0;
  }
}

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
    } else if (std::size_t len = other_instruction(code, i)) {
      i += len;  // interleaved with the pushes (lea -0x38(%rdi),%rbp; mov %esi,%ebp …): the stack is untouched
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
