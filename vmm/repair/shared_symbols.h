// The kernel image's symbols (diag/kernel/image_symbols.h) once per host and kernel: a file of the
// host's shared directory (repair/shared_file.h), named by the block's digest and mapped read-only
// by every process that holds a profile of that kernel, whatever each guest's KASLR slide. Each
// supervisor kept its own ≈ 4 MiB copy before (issue 20).
#pragma once

#include "base/unique_fd.h"
#include "kernel/image_symbols.h"

#include <memory>
#include <string>

namespace immortal::vmm {

// The host's copy of `built` (written first when no instance has written it yet), held for as
// long as the returned block lives; the file is the block, then a hole up to a power of two.
// nullptr, with `why`, when there is none to use (the directory unusable, the file not what its
// name says): the caller keeps its own.
std::shared_ptr<const ImageSymbols> host_image_symbols(const std::string& dir, const ImageSymbols& built,
                                                       std::string* why = nullptr);

// The host's file of a guest kernel's image symbols as a repair agent is given it: read-only, a
// window of the repair VM or a descriptor of the inline agent, which reads them there instead of
// keeping a copy of its own.
struct SymbolsWindow {
  UniqueFd fd;
  std::uint64_t bytes;                 // the file's length, a power of two
  std::shared_ptr<const void> keeper;  // holds the file's shared lock while the agent may read it
};

// The host's file of `block` (one host_image_symbols() returned, still held by it), opened
// read-only for a repair VM's window of window_bytes (the file's length, a power of two); an
// invalid descriptor when there is none.
UniqueFd open_host_image_symbols(const std::string& dir, const ImageSymbols& block, std::uint64_t& window_bytes);

// The file's name for a block of that digest.
std::string image_symbols_file_name(const std::string& digest);

}  // namespace immortal::vmm
