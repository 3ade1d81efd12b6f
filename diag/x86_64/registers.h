// The architectural state of one x86-64 vCPU that crash handling needs: general purpose
// registers, segment selectors and bases, control registers. Backend-independent: the
// QEMU backend fills it from the gdbstub, a vmcore writer turns it into NT_PRSTATUS.
#pragma once

#include <cstdint>
#include <string>

namespace immortal {

struct X86Registers {
  std::uint64_t rax = 0, rbx = 0, rcx = 0, rdx = 0, rsi = 0, rdi = 0, rbp = 0, rsp = 0;
  std::uint64_t r8 = 0, r9 = 0, r10 = 0, r11 = 0, r12 = 0, r13 = 0, r14 = 0, r15 = 0;
  std::uint64_t rip = 0, rflags = 0;
  std::uint64_t cs = 0, ss = 0, ds = 0, es = 0, fs = 0, gs = 0;
  std::uint64_t fs_base = 0, gs_base = 0, kernel_gs_base = 0;
  std::uint64_t cr0 = 0, cr2 = 0, cr3 = 0, cr4 = 0, cr8 = 0, efer = 0;

  // Pointer to the field with that (gdb/QEMU) name, or nullptr. Names: rax…r15, rip,
  // eflags, cs…gs, fs_base, gs_base, k_gs_base, cr0…cr8, efer.
  std::uint64_t* field(const std::string& name);
  const std::uint64_t* field(const std::string& name) const;
};

}  // namespace immortal
