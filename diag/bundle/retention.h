// Keeps a bundle directory within limits: at most `keep` bundles and `max_bytes` in total,
// removing the oldest first (by the time in their manifest, then by name) and never the newest.
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
  std::uint64_t bytes = 0;
};

// The complete bundles in dir, oldest first.
std::vector<StoredBundle> list_bundles(const std::string& dir);
// Removes bundles as the policy says; returns the paths removed.
std::vector<std::string> apply_retention(const std::string& dir, const RetentionPolicy& policy);

}  // namespace immortal::bundle
