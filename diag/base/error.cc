#include "base/error.h"

#include <cstring>

namespace immortal {

std::string os_message(const std::string& what, int err) {
  return fmt::format("{}: {}", what, std::strerror(err));
}

void fail_os(ExitCode code, const std::string& what, int err) {
  throw Error(code, os_message(what, err));
}

}  // namespace immortal
