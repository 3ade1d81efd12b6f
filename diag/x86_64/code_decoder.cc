#include "x86_64/code_decoder.h"

#include <capstone/capstone.h>

#include <memory>

namespace immortal {

namespace {

// The register number of a general-purpose register of any width, -1 for others.
int gpr_number(unsigned reg) {
  switch (reg) {
    case X86_REG_RAX: case X86_REG_EAX: case X86_REG_AX: case X86_REG_AL: case X86_REG_AH: return 0;
    case X86_REG_RCX: case X86_REG_ECX: case X86_REG_CX: case X86_REG_CL: case X86_REG_CH: return 1;
    case X86_REG_RDX: case X86_REG_EDX: case X86_REG_DX: case X86_REG_DL: case X86_REG_DH: return 2;
    case X86_REG_RBX: case X86_REG_EBX: case X86_REG_BX: case X86_REG_BL: case X86_REG_BH: return 3;
    case X86_REG_RSP: case X86_REG_ESP: case X86_REG_SP: case X86_REG_SPL: return 4;
    case X86_REG_RBP: case X86_REG_EBP: case X86_REG_BP: case X86_REG_BPL: return 5;
    case X86_REG_RSI: case X86_REG_ESI: case X86_REG_SI: case X86_REG_SIL: return 6;
    case X86_REG_RDI: case X86_REG_EDI: case X86_REG_DI: case X86_REG_DIL: return 7;
    case X86_REG_R8: case X86_REG_R8D: case X86_REG_R8W: case X86_REG_R8B: return 8;
    case X86_REG_R9: case X86_REG_R9D: case X86_REG_R9W: case X86_REG_R9B: return 9;
    case X86_REG_R10: case X86_REG_R10D: case X86_REG_R10W: case X86_REG_R10B: return 10;
    case X86_REG_R11: case X86_REG_R11D: case X86_REG_R11W: case X86_REG_R11B: return 11;
    case X86_REG_R12: case X86_REG_R12D: case X86_REG_R12W: case X86_REG_R12B: return 12;
    case X86_REG_R13: case X86_REG_R13D: case X86_REG_R13W: case X86_REG_R13B: return 13;
    case X86_REG_R14: case X86_REG_R14D: case X86_REG_R14W: case X86_REG_R14B: return 14;
    case X86_REG_R15: case X86_REG_R15D: case X86_REG_R15W: case X86_REG_R15B: return 15;
    default: return -1;
  }
}

bool is_64bit_gpr(unsigned reg) {
  switch (reg) {
    case X86_REG_RAX: case X86_REG_RCX: case X86_REG_RDX: case X86_REG_RBX: case X86_REG_RSP: case X86_REG_RBP:
    case X86_REG_RSI: case X86_REG_RDI: case X86_REG_R8: case X86_REG_R9: case X86_REG_R10: case X86_REG_R11:
    case X86_REG_R12: case X86_REG_R13: case X86_REG_R14: case X86_REG_R15:
      return true;
    default:
      return false;
  }
}

struct Handle {
  csh h = 0;
  bool ok = false;
  Handle() {
    ok = cs_open(CS_ARCH_X86, CS_MODE_64, &h) == CS_ERR_OK;
    if (ok) cs_option(h, CS_OPT_DETAIL, CS_OPT_ON);
  }
  ~Handle() {
    if (ok) cs_close(&h);
  }
};

void describe(csh h, const cs_insn& insn, Instruction& out) {
  const cs_x86& x = insn.detail->x86;
  for (std::uint8_t g = 0; g < insn.detail->groups_count; ++g) {
    switch (insn.detail->groups[g]) {
      case CS_GRP_CALL: out.kind = Instruction::Kind::call; break;
      case CS_GRP_RET: out.kind = Instruction::Kind::ret; break;
      case CS_GRP_JUMP:
        out.kind = insn.id == X86_INS_JMP ? Instruction::Kind::jump : Instruction::Kind::conditional_jump;
        break;
      default: break;
    }
  }
  if (out.kind != Instruction::Kind::other && x.op_count == 1 && x.operands[0].type == X86_OP_IMM)
    out.target = static_cast<std::uint64_t>(x.operands[0].imm);
  cs_regs read, written;
  std::uint8_t nread = 0, nwritten = 0;
  if (cs_regs_access(h, &insn, read, &nread, written, &nwritten) == CS_ERR_OK)
    for (std::uint8_t i = 0; i < nwritten; ++i)
      if (int n = gpr_number(written[i]); n >= 0) out.writes |= static_cast<std::uint16_t>(1u << n);
  if (out.kind == Instruction::Kind::call) out.writes |= 0x0fc7;  // the callee may clobber rax rcx rdx rsi rdi r8–r11
  for (std::uint8_t o = 0; o < x.op_count; ++o) {
    const cs_x86_op& op = x.operands[o];
    if (op.type != X86_OP_MEM || insn.id == X86_INS_LEA || insn.id == X86_INS_NOP) continue;
    int base = op.mem.base == X86_REG_INVALID ? -1 : gpr_number(op.mem.base);
    if (base < 0 || op.mem.index != X86_REG_INVALID || op.mem.segment != X86_REG_INVALID || out.memory) {
      out.other_memory = true;
      continue;
    }
    out.memory = Instruction::Memory{base, op.mem.disp, (op.access & CS_AC_READ) != 0, (op.access & CS_AC_WRITE) != 0};
  }
  // Loads into a 64-bit register: mov reg/imm, lea.
  if (x.op_count != 2 || x.operands[0].type != X86_OP_REG || !is_64bit_gpr(x.operands[0].reg)) return;
  Instruction::Load load;
  load.dest = gpr_number(x.operands[0].reg);
  const cs_x86_op& src = x.operands[1];
  if (insn.id == X86_INS_MOV && src.type == X86_OP_REG && is_64bit_gpr(src.reg)) {
    load.base = gpr_number(src.reg);
  } else if (insn.id == X86_INS_MOV && src.type == X86_OP_IMM) {
    load.displacement = src.imm;
  } else if (insn.id == X86_INS_LEA && src.type == X86_OP_MEM && src.mem.index == X86_REG_INVALID &&
             src.mem.segment == X86_REG_INVALID) {
    load.displacement = src.mem.disp;
    if (src.mem.base == X86_REG_RIP) {
      load.displacement += static_cast<std::int64_t>(insn.address + insn.size);
    } else if (src.mem.base != X86_REG_INVALID) {
      load.base = gpr_number(src.mem.base);
      if (load.base < 0) return;
    }
  } else {
    return;
  }
  out.load = load;
}

}  // namespace

std::vector<Instruction> decode_code(std::span<const std::uint8_t> code, std::uint64_t base) {
  std::vector<Instruction> out;
  static thread_local Handle handle;
  if (!handle.ok) return out;
  cs_insn* insn = cs_malloc(handle.h);
  if (!insn) return out;
  std::unique_ptr<cs_insn, void (*)(cs_insn*)> owned(insn, [](cs_insn* p) { cs_free(p, 1); });
  const std::uint8_t* at = code.data();
  std::size_t left = code.size();
  std::uint64_t address = base;
  while (left > 0) {
    if (cs_disasm_iter(handle.h, &at, &left, &address, insn)) {
      Instruction i;
      i.address = insn->address;
      i.size = static_cast<std::uint8_t>(insn->size);
      describe(handle.h, *insn, i);
      out.push_back(i);
    } else {
      Instruction i;  // not an instruction: one byte of "other"
      i.address = address;
      i.size = 1;
      out.push_back(i);
      ++at;
      --left;
      ++address;
    }
  }
  return out;
}

}  // namespace immortal
