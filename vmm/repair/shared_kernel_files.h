// The parts of a guest kernel's profile that are the same for every guest of that kernel, once per
// host: files of the host's shared directory (repair/shared_file.h), named by their digest and
// mapped read-only by every process that holds a profile of that kernel, whatever each guest's
// KASLR slide (issue 20). Two of them:
//   - the kernel image's symbols (diag/kernel/image_symbols.h): each supervisor kept its own
//     ≈ 4 MiB copy before;
//   - the kernel's raw BTF (diag/types/btf_types.h): libbpf's ≈ 5 MiB copy in each supervisor and
//     each repair agent before.
// Each file is its bytes, then a hole up to a power of two, so that a repair VM can see it whole
// as a PCI window.
#pragma once

#include "base/unique_fd.h"
#include "kernel/image_symbols.h"
#include "types/btf_types.h"

#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>

namespace immortal::vmm {

// The host's copy of `built` (written first when no instance has written it yet), held for as
// long as the returned block lives. nullptr, with `why`, when there is none to use (the directory
// unusable, the file not what its name says): the caller keeps its own.
std::shared_ptr<const ImageSymbols> host_image_symbols(const std::string& dir, const ImageSymbols& built,
                                                       std::string* why = nullptr);

// The host's copy of a kernel's raw BTF: the same bytes as `own` (checked), and what keeps them
// mapped and the file held. nullopt, with `why`, when there is none to use.
struct HostBtf {
  std::span<const std::uint8_t> bytes;
  std::shared_ptr<const void> keeper;
  std::string file;
};
std::optional<HostBtf> host_kernel_btf(const std::string& dir, const BtfTypes& own, std::string* why = nullptr);

// A holder's reference to the host's copy of a kernel's BTF: its digest (the file's name), its
// length, and what holds the file.
struct SharedBtfRef {
  std::string digest;
  std::uint64_t bytes = 0;
  std::shared_ptr<const void> keeper;
};

// The files' names for contents of that digest.
std::string image_symbols_file_name(const std::string& digest);
std::string kernel_btf_file_name(const std::string& digest);

// One of these files as a repair agent is given it: read-only, a window of the repair VM or a
// descriptor of the inline agent, which reads it there instead of keeping a copy of its own.
struct KernelFileWindow {
  UniqueFd fd;
  std::uint64_t bytes;                 // the file's length, a power of two
  std::shared_ptr<const void> keeper;  // holds the file's shared lock while the agent may read it
};
struct HostKernelFiles {
  std::optional<KernelFileWindow> symbols, types;
};

// A file of the host's shared directory named `name` and at least min_bytes long (what a holder
// mapped of it), opened read-only for a window of window_bytes (its length, a power of two); an
// invalid descriptor when there is none.
UniqueFd open_host_kernel_file(const std::string& dir, const std::string& name, std::uint64_t min_bytes,
                               std::uint64_t& window_bytes);

}  // namespace immortal::vmm
