#include "instance.h"

#include "base/error.h"
#include "base/private_dir.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>

namespace immortal::vmm {

std::string runtime_root(const std::string& override_dir) {
  if (!override_dir.empty()) return override_dir;
  if (const char* env = std::getenv("IMMORTAL_RUNTIME_DIR"); env && *env) return env;
  if (::geteuid() == 0) return "/run/immortal";
  if (const char* xdg = std::getenv("XDG_RUNTIME_DIR"); xdg && *xdg) return std::string(xdg) + "/immortal";
  return fmt::format("/tmp/immortal-{}", ::geteuid());
}

void check_instance_name(const std::string& name) {
  bool ok = !name.empty() && name.size() <= 32 && name[0] != '.';
  for (char c : name)
    ok = ok && (std::isalnum(static_cast<unsigned char>(c)) || c == '_' || c == '.' || c == '-');
  if (!ok) fail(ExitCode::usage, "invalid instance name \"{}\": use 1-32 letters, digits, '_', '.', '-'", name);
}

// The runtime root and each instance's directory: ours, mode 0700, never someone else's or a
// symbolic link planted in a shared directory (base/private_dir.h); never chmod'ed.
static void make_private_dir(const std::string& path) {
  ensure_private_directory(path, "the runtime directory", /*private_only=*/true);
}

static UniqueFd open_lock(const std::string& dir, bool create) {
  std::string path = dir + "/lock";
  return UniqueFd(::open(path.c_str(), (create ? O_CREAT : 0) | O_RDWR | O_CLOEXEC, 0600));
}

InstanceDir InstanceDir::claim(const std::string& root, const std::string& name) {
  check_instance_name(name);
  // The parent of the root may need creating too (e.g. $XDG_RUNTIME_DIR/immortal).
  make_private_dir(root);
  InstanceDir dir;
  dir.name_ = name;
  dir.path_ = root + "/" + name;
  make_private_dir(dir.path_);
  dir.lock_ = open_lock(dir.path_, true);
  if (!dir.lock_) fail_os(ExitCode::failure, "open " + dir.path_ + "/lock", errno);
  if (::flock(dir.lock_.get(), LOCK_EX | LOCK_NB) != 0) {
    if (errno == EWOULDBLOCK) fail(ExitCode::failure, "an instance named \"{}\" is already running", name);
    fail_os(ExitCode::failure, "lock " + dir.path_, errno);
  }
  dir.owner_ = true;
  dir.remove_sockets();  // leftovers of an instance that was killed
  return dir;
}

InstanceDir::~InstanceDir() {
  if (owner_ && lock_) remove_sockets();
}

void InstanceDir::remove_sockets() const { ::unlink(file("control.sock").c_str()); }

void InstanceDir::unlock() {
  lock_.reset();
  owner_ = false;
}

void InstanceDir::relock() {
  lock_ = open_lock(path_, true);
  if (!lock_ || ::flock(lock_.get(), LOCK_EX | LOCK_NB) != 0)
    fail(ExitCode::failure, "cannot take the instance \"{}\" back: another supervisor holds it", name_);
  owner_ = true;
}

bool instance_running(const std::string& root, const std::string& name) {
  UniqueFd lock = open_lock(root + "/" + name, false);
  if (!lock) return false;
  return ::flock(lock.get(), LOCK_SH | LOCK_NB) != 0 && errno == EWOULDBLOCK;
}

std::vector<std::string> running_instances(const std::string& root) {
  std::vector<std::string> names;
  DIR* dir = ::opendir(root.c_str());
  if (!dir) return names;
  while (dirent* e = ::readdir(dir)) {
    std::string name = e->d_name;
    if (name.empty() || name[0] == '.') continue;
    if (instance_running(root, name)) names.push_back(name);
  }
  ::closedir(dir);
  std::sort(names.begin(), names.end());
  return names;
}

}  // namespace immortal::vmm
