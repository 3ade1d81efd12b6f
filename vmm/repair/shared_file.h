// A file that every instance of a runtime root uses alike (the repair VM's initramfs, the same for
// every guest of one agent), kept once per host instead of once per instance: each repair QEMU
// maps the file it boots, so one file means its pages are shared by all of them (issue 20).
//
// A file is named by a digest of what it is made from, written under a temporary name and renamed
// into place, and held by each user with a shared flock(2) for as long as the user may boot from
// it. Whoever acquires a file removes the others of the directory that nobody holds any more (the
// files of an agent an upgrade replaced), each under an exclusive lock, so a file is never
// removed under a user. A user checks after locking that its file is still the one at the path.
#pragma once

#include "base/unique_fd.h"

#include <cstdint>
#include <functional>
#include <string>

namespace immortal::vmm {

class SharedFile {
 public:
  SharedFile() = default;
  // The file `name` in dir (made private, mode 0700, if missing), written by write(path) when
  // it is not there yet; held until this object goes. Throws Error when the directory cannot be
  // made or the file neither found nor written.
  static SharedFile acquire(const std::string& dir, const std::string& name,
                            const std::function<void(const std::string& path)>& write);

  const std::string& path() const { return path_; }
  std::uint64_t bytes() const { return bytes_; }
  bool held() const { return lock_.valid(); }

 private:
  std::string path_;
  std::uint64_t bytes_ = 0;
  UniqueFd lock_;  // a shared flock on the file's inode
};

// Removes the files of dir that nobody holds, but `keep` and files being written by a live process.
// Returns how many it removed.
int remove_unheld_files(const std::string& dir, const std::string& keep);

}  // namespace immortal::vmm
