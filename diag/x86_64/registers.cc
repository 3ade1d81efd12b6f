#include "x86_64/registers.h"

#include <cstddef>
#include <utility>

namespace immortal {

namespace {
struct Named {
  const char* name;
  std::uint64_t X86Registers::*member;
};
constexpr Named kFields[] = {
    {"rax", &X86Registers::rax},       {"rbx", &X86Registers::rbx},
    {"rcx", &X86Registers::rcx},       {"rdx", &X86Registers::rdx},
    {"rsi", &X86Registers::rsi},       {"rdi", &X86Registers::rdi},
    {"rbp", &X86Registers::rbp},       {"rsp", &X86Registers::rsp},
    {"r8", &X86Registers::r8},         {"r9", &X86Registers::r9},
    {"r10", &X86Registers::r10},       {"r11", &X86Registers::r11},
    {"r12", &X86Registers::r12},       {"r13", &X86Registers::r13},
    {"r14", &X86Registers::r14},       {"r15", &X86Registers::r15},
    {"rip", &X86Registers::rip},       {"eflags", &X86Registers::rflags},
    {"cs", &X86Registers::cs},         {"ss", &X86Registers::ss},
    {"ds", &X86Registers::ds},         {"es", &X86Registers::es},
    {"fs", &X86Registers::fs},         {"gs", &X86Registers::gs},
    {"fs_base", &X86Registers::fs_base}, {"gs_base", &X86Registers::gs_base},
    {"k_gs_base", &X86Registers::kernel_gs_base},
    {"cr0", &X86Registers::cr0},       {"cr2", &X86Registers::cr2},
    {"cr3", &X86Registers::cr3},       {"cr4", &X86Registers::cr4},
    {"cr8", &X86Registers::cr8},       {"efer", &X86Registers::efer},
};
}  // namespace

std::uint64_t* X86Registers::field(const std::string& name) {
  for (const auto& f : kFields)
    if (name == f.name) return &(this->*f.member);
  return nullptr;
}

const std::uint64_t* X86Registers::field(const std::string& name) const {
  return const_cast<X86Registers*>(this)->field(name);
}

}  // namespace immortal
