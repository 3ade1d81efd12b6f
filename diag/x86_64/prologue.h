// What a function's prologue saves on the stack, decoded from its first bytes: enough to return
// from a frame of that function with the callee-saved registers (System V x86-64: rbx, rbp,
// r12–r15) its caller expects. ORC, the kernel's unwinder format, tracks only the stack pointer,
// so this is how recovery learns where the other registers went.
//
// Only the shapes GCC emits for kernel code are accepted: an optional endbr64 and ftrace site
// (nop5 or call __fentry__), then pushes, register-to-register moves and "mov %rsp,%rbp",
// ending at "sub $n,%rsp" or any other instruction. Anything else stops the decoding; the
// caller cross-checks the result against ORC's stack offset before trusting it.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <vector>

namespace immortal {

struct PushedRegister {
  std::string name;       // "rbx", "r12", ... (gdb names, as X86Registers::field takes)
  std::uint32_t offset;   // of the push instruction from the function start
};

struct Prologue {
  std::vector<PushedRegister> pushes;  // in order: the first is at CFA-16, the next at CFA-24 ...
  std::uint64_t stack_adjust = 0;      // sub $n,%rsp right after the pushes (0 if none)
  std::uint32_t adjust_offset = 0;     // of that sub instruction
  bool frame_pointer = false;          // push %rbp; mov %rsp,%rbp
  std::uint32_t length = 0;            // bytes decoded
};

Prologue decode_prologue(std::span<const std::uint8_t> code);

// Bytes of the stack a frame of this function occupies below its return address when it is at
// offset `at` of the function (past the pushes and sub executed so far).
std::uint64_t frame_depth_at(const Prologue& prologue, std::uint32_t at);

}  // namespace immortal
