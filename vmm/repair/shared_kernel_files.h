// The parts of a guest kernel's profile that are the same for every guest of that kernel, once per
// host: files of the host's shared directory (repair/shared_file.h), named by their digest and
// mapped read-only by every process that holds a profile of that kernel, whatever each guest's
// KASLR slide (issue 20). Three of them:
//   - the kernel image's symbols (diag/kernel/image_symbols.h): each supervisor kept its own
//     ≈ 4 MiB copy before;
//   - the kernel's raw BTF (diag/types/btf_types.h): libbpf's ≈ 5 MiB copy in each supervisor and
//     each repair agent before;
//   - the kernel image's ORC unwind tables (diag/kernel/orc_unwind.h): ≈ 4 MiB in each repair
//     agent before.
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

// The host's copy of bytes a holder has (a kernel's raw BTF, its image's ORC tables): the same
// bytes (checked), what keeps them mapped and the file held, and the file's name. nullopt, with
// `why`, when there is none to use.
struct HostCopy {
  std::span<const std::uint8_t> bytes;
  std::shared_ptr<const void> keeper;
  std::string path;
};
std::optional<HostCopy> host_kernel_btf(const std::string& dir, const BtfTypes& own, std::string* why = nullptr);
std::optional<HostCopy> host_kernel_orc(const std::string& dir, std::span<const std::uint8_t> own, std::string* why = nullptr);

// A holder's reference to one of the host's files: its path, its content's length, and what
// holds the file.
struct SharedFileRef {
  std::string path;
  std::uint64_t bytes = 0;
  std::shared_ptr<const void> keeper;
  std::string digest;  // of its content, when the holder knows it (content_digest)
};

// The files' names for contents of that digest (content_digest).
std::string image_symbols_file_name(const std::string& digest);
std::string kernel_btf_file_name(const std::string& digest);
std::string kernel_orc_file_name(const std::string& digest);

// One of these files as a repair agent is given it: read-only, a window of the repair VM or a
// descriptor of the inline agent, which reads it there instead of keeping a copy of its own.
struct KernelFileWindow {
  UniqueFd fd;
  std::uint64_t bytes;                 // the file's length, a power of two
  std::shared_ptr<const void> keeper;  // holds the file's shared lock while the agent may read it
  std::string digest;                  // of its content, when known: what a payload that leaves it out names
  std::uint64_t length = 0;            // of its content (the window is longer)
};
struct HostKernelFiles {
  std::optional<KernelFileWindow> symbols, types, unwind;
};

// One of these files, at least min_bytes long (what a holder mapped of it), opened read-only for a
// window of window_bytes (its length, a power of two); an invalid descriptor when there is none.
UniqueFd open_host_kernel_file(const std::string& path, std::uint64_t min_bytes, std::uint64_t& window_bytes);

}  // namespace immortal::vmm
