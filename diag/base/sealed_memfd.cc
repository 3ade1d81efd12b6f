#include "base/sealed_memfd.h"

#include "base/error.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

namespace immortal {

UniqueFd sealed_memfd(const std::string& name, std::uint64_t bytes) {
  UniqueFd fd(::memfd_create(name.c_str(), MFD_CLOEXEC | MFD_ALLOW_SEALING));
  if (!fd) fail_os(ExitCode::failure, "memfd_create " + name, errno);
  if (::ftruncate(fd.get(), static_cast<off_t>(bytes)) != 0) fail_os(ExitCode::failure, "size " + name, errno);
  if (::fcntl(fd.get(), F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL) != 0)
    fail_os(ExitCode::failure, "seal " + name, errno);
  return fd;
}

}  // namespace immortal
