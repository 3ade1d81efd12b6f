// QEMU's x86-64 register numbering in its gdbstub ("g" packet order), from QEMU 7.2's
// target/i386/gdbstub.c (x86_cpu_gdb_read_register): 16 GPRs and rip (8 bytes), eflags and the
// six selectors (4 bytes), fs_base, gs_base, k_gs_base, cr0, cr2, cr3, cr4, cr8, efer (8 bytes),
// st0-7 (10), eight x87 control words (4), xmm0-15 (16), mxcsr (4).
//
// The target description QEMU serves (i386-64bit.xml) is not used for offsets: Debian's QEMU
// 7.2 advertises ss_base/ds_base/es_base there that its "g" packet does not carry (measured:
// 608 bytes, not the 632 the XML adds up to). The client checks the "g" size against this table
// and refuses a stub that disagrees.
#pragma once

#include "x86_64/registers.h"

#include <cstddef>
#include <string>
#include <string_view>
#include <vector>

namespace immortal::qemu {

struct GdbRegister {
  const char* name;
  std::size_t size;    // bytes
  std::size_t offset;  // in the "g" block
};

const std::vector<GdbRegister>& x86_64_gdb_registers();
std::size_t x86_64_gdb_block_size();

// Fills the X86Registers fields from a raw "g" block (already hex-decoded).
X86Registers decode_x86_64_registers(std::string_view block);
// Writes the X86Registers fields into a raw block, leaving FPU/SSE state as it was.
void encode_x86_64_registers(const X86Registers& registers, std::string& block);

}  // namespace immortal::qemu
