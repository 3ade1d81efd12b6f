#include "base/private_dir.h"

#include "base/error.h"
#include "base/unique_fd.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <vector>

namespace immortal {

void ensure_private_directory(const std::string& given, const std::string& what, bool private_only) {
  std::string path = std::filesystem::absolute(given).lexically_normal().string();
  while (path.size() > 1 && path.back() == '/') path.pop_back();
  std::vector<std::string> parts;
  for (std::size_t start = 1; start < path.size();) {
    std::size_t end = path.find('/', start);
    if (end == std::string::npos) end = path.size();
    if (end > start) parts.push_back(path.substr(start, end - start));
    start = end + 1;
  }
  uid_t me = ::geteuid();
  UniqueFd dir(::open("/", O_DIRECTORY | O_RDONLY | O_CLOEXEC));
  if (!dir) fail_os(ExitCode::failure, "open /", errno);
  std::string walked;
  struct stat st {};
  if (::fstat(dir.get(), &st) != 0) fail_os(ExitCode::failure, "stat /", errno);
  for (const auto& part : parts) {
    // Others may change what this directory holds: nothing in it is followed or trusted unless ours.
    bool shared = (st.st_mode & S_IWOTH) || ((st.st_mode & S_IWGRP) && st.st_gid != 0) || (st.st_uid != 0 && st.st_uid != me);
    walked += "/" + part;
    int flags = O_DIRECTORY | O_RDONLY | O_CLOEXEC | (shared ? O_NOFOLLOW : 0);
    UniqueFd next(::openat(dir.get(), part.c_str(), flags));
    if (!next && errno == ENOENT) {
      if (::mkdirat(dir.get(), part.c_str(), 0700) != 0 && errno != EEXIST)
        fail_os(ExitCode::failure, fmt::format("create {} {}", what, walked), errno);
      next = UniqueFd(::openat(dir.get(), part.c_str(), O_DIRECTORY | O_RDONLY | O_CLOEXEC | O_NOFOLLOW));
    }
    if (!next) {
      if (errno == ELOOP || errno == ENOTDIR)
        fail(ExitCode::failure, "{}: {} is not a directory (a symbolic link where others can write is not followed)",
             what, walked);
      fail_os(ExitCode::failure, fmt::format("open {} {}", what, walked), errno);
    }
    if (::fstat(next.get(), &st) != 0) fail_os(ExitCode::failure, "stat " + walked, errno);
    if (shared && st.st_uid != me)
      fail(ExitCode::failure, "{}: {} belongs to uid {} in a directory others can write: refused (choose another)", what,
           walked, st.st_uid);
    dir = std::move(next);
  }
  if (st.st_uid != me)
    fail(ExitCode::failure, "{} {} belongs to uid {}, not to us (uid {})", what, path, st.st_uid, me);
  if (st.st_mode & (S_IWGRP | S_IWOTH))
    fail(ExitCode::failure, "{} {} is writable by others (mode {:o}): chmod go-w it, or choose another", what, path,
         st.st_mode & 07777);
  if (private_only && (st.st_mode & 077))
    fail(ExitCode::failure, "{} {} is open to others (mode {:o}): chmod 700 it, or choose one of its own", what, path,
         st.st_mode & 07777);
}

}  // namespace immortal
