// Fuzz target: a block of the kernel image's symbols as another process hands it over (a file of
// the host's shared directory, a repair VM's window; kernel/image_symbols.h). view() must take it
// or refuse it with a reason; what it takes must answer every lookup inside its own bounds and end.
#include "kernel/image_symbols.h"

#include <cstdint>
#include <span>
#include <string>

using namespace immortal;

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  std::string why;
  auto block = ImageSymbols::view(std::span<const std::uint8_t>(data, size), nullptr, &why);
  if (!block) {
    if (why.empty()) __builtin_trap();
    return 0;
  }
  std::uint64_t sum = 0;
  for (std::size_t i = 0; i < block->size(); ++i) {
    auto e = block->at(i);
    sum += e.name.size() + static_cast<unsigned char>(e.type);
    // A crafted block need not index every name; what it finds is that name.
    if (auto found = block->find(e.name); found && block->at(*found).name != e.name) __builtin_trap();
    auto below = block->at_or_below(e.offset);
    if (!below || block->at(*below).offset != e.offset) __builtin_trap();
    if (auto above = block->above(e.offset); above && block->at(*above).offset <= e.offset) __builtin_trap();
  }
  if (block->find("no symbol has this name")) sum += 1;
  return static_cast<int>(sum & 0);
}
