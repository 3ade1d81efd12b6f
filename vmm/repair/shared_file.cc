#include "repair/shared_file.h"

#include "base/error.h"
#include "base/private_dir.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <fmt/format.h>

#include <cerrno>

namespace immortal::vmm {

namespace {

bool same_file(const struct stat& a, const struct stat& b) { return a.st_dev == b.st_dev && a.st_ino == b.st_ino; }

// fd still names the file at path (nobody removed or replaced it since it was opened).
bool still_at(int fd, const std::string& path) {
  struct stat held {}, now {};
  return ::fstat(fd, &held) == 0 && held.st_nlink > 0 && ::stat(path.c_str(), &now) == 0 && same_file(held, now);
}

}  // namespace

SharedFile SharedFile::acquire(const std::string& dir, const std::string& name,
                               const std::function<void(const std::string& path)>& write) {
  if (name.empty() || name.find('/') != std::string::npos || name[0] == '.')
    fail(ExitCode::failure, "\"{}\" is not a shared file's name", name);
  ensure_private_directory(dir, "the directory of files shared by the host's instances", true);
  SharedFile f;
  f.path_ = dir + "/" + name;
  // A few rounds: another instance may write the same file at the same moment, or remove it as
  // unheld between our writing and our holding it.
  for (int round = 0; round < 5; ++round) {
    UniqueFd fd(::open(f.path_.c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW));
    if (!fd) {
      if (errno != ENOENT) fail_os(ExitCode::failure, "open " + f.path_, errno);
      // Written under a name of our own, held exclusively meanwhile (so that nobody removes it as
      // unheld), and renamed into place whole.
      std::string partial = fmt::format("{}/{}.partial.{}", dir, name, ::getpid());
      ::unlink(partial.c_str());
      UniqueFd writing(::open(partial.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0600));
      if (!writing) fail_os(ExitCode::failure, "create " + partial, errno);
      if (::flock(writing.get(), LOCK_EX) != 0) fail_os(ExitCode::failure, "lock " + partial, errno);
      try {
        write(partial);
      } catch (...) {
        ::unlink(partial.c_str());
        throw;
      }
      if (::rename(partial.c_str(), f.path_.c_str()) != 0) {
        int err = errno;
        ::unlink(partial.c_str());
        fail_os(ExitCode::failure, "rename " + partial, err);
      }
      continue;  // and held like any other user's
    }
    if (::flock(fd.get(), LOCK_SH) != 0) fail_os(ExitCode::failure, "lock " + f.path_, errno);
    if (!still_at(fd.get(), f.path_)) continue;
    struct stat st {};
    if (::fstat(fd.get(), &st) != 0 || !S_ISREG(st.st_mode)) fail(ExitCode::failure, "{} is not a regular file", f.path_);
    f.bytes_ = static_cast<std::uint64_t>(st.st_size);
    f.lock_ = std::move(fd);
    remove_unheld_files(dir, name);
    return f;
  }
  fail(ExitCode::failure, "{} kept changing under us (other instances writing and removing it)", f.path_);
}

int remove_unheld_files(const std::string& dir, const std::string& keep) {
  UniqueFd d(::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC | O_NOFOLLOW));
  if (!d) return 0;
  DIR* listing = ::fdopendir(::dup(d.get()));
  if (!listing) return 0;
  int removed = 0;
  while (dirent* e = ::readdir(listing)) {
    std::string name = e->d_name;
    if (name == "." || name == ".." || name == keep) continue;
    UniqueFd fd(::openat(d.get(), name.c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK));
    struct stat held {}, now {};
    if (!fd || ::fstat(fd.get(), &held) != 0 || !S_ISREG(held.st_mode)) continue;
    // Held by a user or a writer: kept. Else it is ours to remove, if it is still the file there.
    if (::flock(fd.get(), LOCK_EX | LOCK_NB) != 0) continue;
    if (::fstatat(d.get(), name.c_str(), &now, AT_SYMLINK_NOFOLLOW) == 0 && same_file(held, now) &&
        ::unlinkat(d.get(), name.c_str(), 0) == 0)
      ++removed;
  }
  ::closedir(listing);
  return removed;
}

}  // namespace immortal::vmm
