// Keeps a bundle directory within limits: at most `keep` bundles and `max_bytes` in total,
// removing the oldest first (by the time they were made, then by name) and never the newest.
// Only one writer's bundles count and are ever removed: complete bundles of this format whose
// manifest names the guest (an archive: its name and owner), never anything else a shared
// directory holds, nor a bundle being written.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace immortal::bundle {

struct RetentionPolicy {
  std::uint64_t keep = 0;       // 0: no count limit
  std::uint64_t max_bytes = 0;  // 0: no size limit
};

struct StoredBundle {
  std::string path;     // directory or .tar.zst
  std::string created;  // from the manifest (ISO 8601), "" if unreadable
  double created_at = 0;  // seconds since the epoch: the manifest's time, an archive's modification time
  std::uint64_t bytes = 0;
};

// Whose bundles: the guest its manifests name, and the start of its bundles' names.
struct BundleOwner {
  std::string guest, name_prefix;
};

// The complete bundles in dir (of owner, when given), oldest first.
std::vector<StoredBundle> list_bundles(const std::string& dir, const BundleOwner* owner = nullptr);
// Removes owner's bundles as the policy says; returns the paths removed.
std::vector<std::string> apply_retention(const std::string& dir, const RetentionPolicy& policy, const BundleOwner& owner);

}  // namespace immortal::bundle
