// References the kernel code on the crashing path took on the driver's behalf and would have
// dropped after the driver returned (docs/recovery.md, "What else the crash left held"). Killing
// the task leaks them; the object then can never be removed (its removal waits for the count to
// drain, forever — `rmmod` of the driver hangs):
//
// - a kernfs active reference (sysfs attributes): kernfs_fop_write_iter(), kernfs_file_read_iter()
//   and kernfs_seq_start() take one on the open file's node around the driver's store()/show();
// - a debugfs file reference: debugfs's proxy file operations (full_proxy_write() …) and
//   debugfs_attr_read/write() take one on the dentry around the driver's handler (LKDTM's files).
//
// Which frames took one is known by their function; the object is found among the values of the
// crashing path: the struct file being served (a "filp" slab object) leads to the node or dentry.
// Each is released by the same kernel function that would have released it.
#pragma once

#include "kernel/kernel.h"

#include <nlohmann/json.hpp>

#include <cstdint>
#include <string>
#include <vector>

namespace immortal::repair {

struct CrashAnalysis;

struct HeldReference {
  std::string type;        // "kernfs-active", "debugfs-file"
  std::string taken_by;    // the function on the crashing path that took it
  std::uint64_t object = 0;  // the struct kernfs_node / struct dentry
  std::uint64_t file = 0;    // the struct file it was found through
  std::string release;     // the kernel function that drops it
  nlohmann::json to_json() const;
};

struct ReferenceSearch {
  std::vector<HeldReference> references;
  std::vector<std::string> unexplained;  // reasons not to resume
};

// values: the data pointers of the crashing path (LockSearch::path_values).
ReferenceSearch find_held_references(const Kernel& kernel, const CrashAnalysis& analysis,
                                     const std::vector<std::uint64_t>& values);

inline constexpr std::uint32_t kDebugfsMagic = 0x64626720;
inline constexpr std::int32_t kKernfsDeactivatedBias = -2147483647;  // INT_MIN + 1 (fs/kernfs/kernfs-internal.h)

}  // namespace immortal::repair
