#include "cli/arguments.h"

#include "base/error.h"
#include "base/size.h"

namespace immortal::vmm {

std::uint64_t parse_memory_size(const std::string& text, const std::string& option) {
  std::uint64_t bytes = parse_size(text, option, "memory size");
  if (bytes > (1ull << 40)) fail(ExitCode::usage, "{}: invalid memory size \"{}\": too large (at most 1T)", option, text);
  if (bytes < (64ull << 20)) fail(ExitCode::usage, "{}: invalid memory size \"{}\": too small (at least 64M)", option, text);
  if (bytes % (1 << 20)) fail(ExitCode::usage, "{}: invalid memory size \"{}\": not a whole number of MiB", option, text);
  return bytes;
}

}  // namespace immortal::vmm
