#include "qemu/x86_64_gdb_layout.h"

#include "base/error.h"

#include <cstdint>

namespace immortal::qemu {

const std::vector<GdbRegister>& x86_64_gdb_registers() {
  static const std::vector<GdbRegister> table = [] {
    std::vector<std::pair<const char*, std::size_t>> spec = {
        {"rax", 8}, {"rbx", 8}, {"rcx", 8}, {"rdx", 8}, {"rsi", 8}, {"rdi", 8}, {"rbp", 8},
        {"rsp", 8}, {"r8", 8}, {"r9", 8}, {"r10", 8}, {"r11", 8}, {"r12", 8}, {"r13", 8},
        {"r14", 8}, {"r15", 8}, {"rip", 8}, {"eflags", 4}, {"cs", 4}, {"ss", 4}, {"ds", 4},
        {"es", 4}, {"fs", 4}, {"gs", 4}, {"fs_base", 8}, {"gs_base", 8}, {"k_gs_base", 8},
        {"cr0", 8}, {"cr2", 8}, {"cr3", 8}, {"cr4", 8}, {"cr8", 8}, {"efer", 8},
        {"st0", 10}, {"st1", 10}, {"st2", 10}, {"st3", 10}, {"st4", 10}, {"st5", 10},
        {"st6", 10}, {"st7", 10}, {"fctrl", 4}, {"fstat", 4}, {"ftag", 4}, {"fiseg", 4},
        {"fioff", 4}, {"foseg", 4}, {"fooff", 4}, {"fop", 4}, {"xmm0", 16}, {"xmm1", 16},
        {"xmm2", 16}, {"xmm3", 16}, {"xmm4", 16}, {"xmm5", 16}, {"xmm6", 16}, {"xmm7", 16},
        {"xmm8", 16}, {"xmm9", 16}, {"xmm10", 16}, {"xmm11", 16}, {"xmm12", 16},
        {"xmm13", 16}, {"xmm14", 16}, {"xmm15", 16}, {"mxcsr", 4}};
    std::vector<GdbRegister> out;
    std::size_t offset = 0;
    for (auto [name, size] : spec) {
      out.push_back({name, size, offset});
      offset += size;
    }
    return out;
  }();
  return table;
}

std::size_t x86_64_gdb_block_size() {
  const auto& t = x86_64_gdb_registers();
  return t.back().offset + t.back().size;
}

X86Registers decode_x86_64_registers(std::string_view block) {
  if (block.size() != x86_64_gdb_block_size())
    fail(ExitCode::qemu, "gdbstub sent {} bytes of registers, expected {} (unknown register layout)",
         block.size(), x86_64_gdb_block_size());
  X86Registers regs;
  for (const auto& r : x86_64_gdb_registers()) {
    std::uint64_t* field = regs.field(r.name);
    if (!field) continue;
    std::uint64_t v = 0;
    for (std::size_t i = 0; i < r.size && i < 8; ++i)
      v |= static_cast<std::uint64_t>(static_cast<unsigned char>(block[r.offset + i])) << (8 * i);
    *field = v;
  }
  return regs;
}

void encode_x86_64_registers(const X86Registers& registers, std::string& block) {
  if (block.size() != x86_64_gdb_block_size())
    fail(ExitCode::qemu, "register block has {} bytes, expected {}", block.size(), x86_64_gdb_block_size());
  for (const auto& r : x86_64_gdb_registers()) {
    const std::uint64_t* field = registers.field(r.name);
    if (!field) continue;
    for (std::size_t i = 0; i < r.size && i < 8; ++i)
      block[r.offset + i] = static_cast<char>((*field >> (8 * i)) & 0xff);
  }
}

}  // namespace immortal::qemu
