#include "bundle/retention.h"

#include "base/error.h"
#include "bundle/bundle_format.h"
#include "bundle/bundle_reader.h"

#include <archive.h>
#include <archive_entry.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <filesystem>

namespace immortal::bundle {

namespace fs = std::filesystem;

namespace {

std::uint64_t tree_size(const fs::path& p) {
  std::error_code ec;
  if (!fs::is_directory(p, ec)) return fs::file_size(p, ec);
  std::uint64_t total = 0;
  for (const auto& e : fs::recursive_directory_iterator(p, ec))
    if (e.is_regular_file(ec)) total += e.file_size(ec);
  return total;
}

}  // namespace

std::vector<StoredBundle> list_bundles(const std::string& dir) {
  std::vector<StoredBundle> out;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(dir, ec)) {
    std::string name = e.path().filename().string();
    if (name.rfind(kPartialPrefix, 0) == 0) continue;  // being written, or left by a dead writer
    StoredBundle b{e.path().string(), "", 0};
    if (e.is_directory(ec)) {
      std::string manifest = e.path().string() + "/" + kManifest;
      if (!fs::exists(manifest, ec)) continue;
      try {
        auto m = nlohmann::json::parse(read_small_file(manifest, 16 << 20));
        if (m.is_object() && m.contains("created") && m["created"].is_string()) b.created = m["created"].get<std::string>();
      } catch (const std::exception&) {
      }
    } else if (!name.ends_with(kArchiveSuffix)) {
      continue;
    } else {
      // An archive's time: its modification time, as ISO-sortable text.
      auto t = fs::last_write_time(e.path(), ec);
      b.created = fmt::format("{:020d}", t.time_since_epoch().count());
    }
    b.bytes = tree_size(e.path());
    out.push_back(std::move(b));
  }
  // Names start with the guest name and a UTC time, so ties sort by time too.
  std::sort(out.begin(), out.end(), [](const StoredBundle& a, const StoredBundle& b) {
    return fs::path(a.path).filename().string() < fs::path(b.path).filename().string();
  });
  return out;
}

std::vector<std::string> apply_retention(const std::string& dir, const RetentionPolicy& policy) {
  auto bundles = list_bundles(dir);
  std::vector<std::string> removed;
  std::uint64_t total = 0;
  for (const auto& b : bundles) total += b.bytes;
  std::size_t count = bundles.size();
  for (std::size_t i = 0; i + 1 < bundles.size(); ++i) {  // never the newest
    bool over_count = policy.keep && count > policy.keep;
    bool over_size = policy.max_bytes && total > policy.max_bytes;
    if (!over_count && !over_size) break;
    std::error_code ec;
    fs::remove_all(bundles[i].path, ec);
    if (ec) continue;
    removed.push_back(bundles[i].path);
    total -= bundles[i].bytes;
    --count;
  }
  return removed;
}

}  // namespace immortal::bundle
