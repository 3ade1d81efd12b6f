// x86-64 machine code as a list of instructions, decoded with Capstone (a well-kept disassembler
// library): for each instruction its address and length, what kind of control transfer it is,
// its direct target, which general-purpose registers it writes, and — when it sets a register
// from a register, an address computation or a constant — where the value came from. Enough to
// follow a value backwards through straight-line code, as the lock search does for the
// argument of a lock call. Garbage decodes to "other" instructions and never throws.
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <vector>

namespace immortal {

// x86-64 register numbers as instructions encode them: 0 rax, 1 rcx, 2 rdx, 3 rbx, 4 rsp,
// 5 rbp, 6 rsi, 7 rdi, 8–15 r8–r15.
inline constexpr int kRegRdi = 7;

struct Instruction {
  enum class Kind { other, call, jump, conditional_jump, ret };
  std::uint64_t address = 0;
  std::uint8_t size = 0;
  Kind kind = Kind::other;
  std::optional<std::uint64_t> target;  // a direct call's or jump's destination
  std::uint16_t writes = 0;             // bit n: register n (any width) is written
  // A register move or address load into the 64-bit destination `dest`: dest = value of
  // register `base` (-1: none) + displacement; with no base the displacement is the absolute
  // value (an immediate, or a RIP-relative address already resolved).
  struct Load {
    int dest = -1;
    int base = -1;
    std::int64_t displacement = 0;
  };
  std::optional<Load> load;
  // Its memory operand, when it has one addressed as register + displacement (no index, no
  // segment override: per-CPU %gs accesses are not described): what a spinning loop polls.
  struct Memory {
    int base = -1;
    std::int64_t displacement = 0;
    bool read = false, write = false;
  };
  std::optional<Memory> memory;
  // It addresses memory some other way (an index, a segment, RIP-relative).
  bool other_memory = false;
};

// Decodes code (guest address base) from its start to its end; bytes that are no instruction
// are stepped over one at a time.
std::vector<Instruction> decode_code(std::span<const std::uint8_t> code, std::uint64_t base);

}  // namespace immortal
