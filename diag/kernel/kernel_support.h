// What of a guest kernel immortal understands, checked against the kernel's own layouts (BTF)
// and symbols before anything relies on them. Readers derive their offsets from BTF, so most
// releases need nothing here; what a release moved beyond that (a structure renamed, a layout of
// another generation) shows up as a missing piece, said at `run` and in `diag`, never guessed.
#pragma once

#include "kernel/kernel.h"

#include <string>
#include <vector>

namespace immortal {

struct KernelSupport {
  struct Piece {
    std::string name;     // "tasks", "modules", …
    std::string how;      // which generation, when it matters ("core_layout (6.1)", "mem[] (6.4 on)")
    std::string missing;  // empty when understood
  };
  std::vector<Piece> pieces;
  bool complete() const;
  // "tasks, per-CPU data (pcpu_hot), modules (mem[] …), …" or what is missing, for one line.
  std::string summary() const;
  std::vector<std::string> missing() const;  // "modules: struct module has …"
};

KernelSupport check_kernel_support(const Kernel& kernel);

}  // namespace immortal
