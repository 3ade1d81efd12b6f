// The static repair agent decodes x86-64 only (diag/x86_64/code_decoder.cc), but Debian's static
// libcapstone holds every architecture: its cs.o names each one's <arch>_global_init and
// <arch>_option, and linking those in pulls that architecture's decoder, printer and tables,
// 3.2 MB of the agent's 9.8. The agent travels in every repair VM's RAM, so these definitions
// stand in for the other architectures: the linker then takes no archive member of theirs, and
// cs_open() of one of them fails with CS_ERR_ARCH. Only for capstone 4 (repair-image/meson.build),
// whose cs.o is the only object naming them; a library that changed that would fail to link
// (a symbol defined twice), not misbehave.
#include <capstone/capstone.h>

#include <cstddef>

struct cs_struct;

#define IMMORTAL_NO_CAPSTONE_ARCH(arch)                                                     \
  extern "C" cs_err arch##_global_init(cs_struct*) { return CS_ERR_ARCH; }                  \
  extern "C" cs_err arch##_option(cs_struct*, cs_opt_type, std::size_t) { return CS_ERR_ARCH; }

IMMORTAL_NO_CAPSTONE_ARCH(ARM)
IMMORTAL_NO_CAPSTONE_ARCH(AArch64)
IMMORTAL_NO_CAPSTONE_ARCH(M68K)
IMMORTAL_NO_CAPSTONE_ARCH(Mips)
IMMORTAL_NO_CAPSTONE_ARCH(PPC)
IMMORTAL_NO_CAPSTONE_ARCH(Sparc)
IMMORTAL_NO_CAPSTONE_ARCH(SystemZ)
IMMORTAL_NO_CAPSTONE_ARCH(XCore)
IMMORTAL_NO_CAPSTONE_ARCH(TMS320C64x)
IMMORTAL_NO_CAPSTONE_ARCH(M680X)
IMMORTAL_NO_CAPSTONE_ARCH(EVM)
