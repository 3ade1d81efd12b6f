// Named instances, as virsh has domains: each running supervisor owns a private runtime
// directory (mode 0700) holding its sockets, logs and a lock held for its whole life. The lock
// says whether an instance is alive, even after a SIGKILL left its files behind.
#pragma once

#include "base/unique_fd.h"

#include <string>
#include <vector>

namespace immortal::vmm {

// $IMMORTAL_RUNTIME_DIR, else /run/immortal for root, else $XDG_RUNTIME_DIR/immortal,
// else /tmp/immortal-UID.
std::string runtime_root(const std::string& override_dir = "");

// Throws Error(ExitCode::usage) unless name is 1-32 of [A-Za-z0-9_.-], not starting with '.'.
void check_instance_name(const std::string& name);

class InstanceDir {
 public:
  // Creates (or takes over a dead instance's) directory and locks it. Throws if an instance
  // of that name is running.
  static InstanceDir claim(const std::string& root, const std::string& name);
  InstanceDir(InstanceDir&&) = default;
  InstanceDir& operator=(InstanceDir&&) = default;
  ~InstanceDir();

  const std::string& path() const { return path_; }
  const std::string& name() const { return name_; }
  std::string file(const char* leaf) const { return path_ + "/" + leaf; }
  // Removes the supervisor's own socket (control.sock); the VM's sockets are the VM's, and logs
  // stay for the operator to read.
  void remove_sockets() const;
  // Lets another supervisor claim the instance (an upgrade hands over), and takes it back.
  // relock() throws Error when another supervisor holds it.
  void unlock();
  void relock();

 private:
  InstanceDir() = default;
  std::string path_, name_;
  UniqueFd lock_;
  bool owner_ = false;  // set once the lock is ours: only then are the files ours to clean
};

// Names of the instances whose supervisor is alive (lock held), sorted.
std::vector<std::string> running_instances(const std::string& root);
bool instance_running(const std::string& root, const std::string& name);

}  // namespace immortal::vmm
