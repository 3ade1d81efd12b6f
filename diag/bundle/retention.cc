#include "bundle/retention.h"

#include "base/error.h"
#include "base/unique_fd.h"
#include "bundle/bundle_format.h"
#include "bundle/bundle_reader.h"

#include <archive.h>
#include <archive_entry.h>
#include <nlohmann/json.hpp>

#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <ctime>
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

// "2026-11-23T10:00:00.123Z" → seconds since the epoch; 0 when it is not such a time.
double epoch_of(const std::string& iso) {
  std::tm tm{};
  int ms = 0;
  if (std::sscanf(iso.c_str(), "%4d-%2d-%2dT%2d:%2d:%2d.%3dZ", &tm.tm_year, &tm.tm_mon, &tm.tm_mday, &tm.tm_hour,
                  &tm.tm_min, &tm.tm_sec, &ms) < 6)
    return 0;
  tm.tm_year -= 1900;
  tm.tm_mon -= 1;
  return static_cast<double>(::timegm(&tm)) + ms / 1000.0;
}

}  // namespace

std::vector<StoredBundle> list_bundles(const std::string& dir, const BundleOwner* owner) {
  std::vector<StoredBundle> out;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(dir, ec)) {
    std::string name = e.path().filename().string();
    if (name.rfind(kPartialPrefix, 0) == 0) continue;  // being written, or left by a dead writer
    if (owner && name.rfind(owner->name_prefix, 0) != 0) continue;
    if (e.is_symlink(ec)) continue;  // ours are never links
    StoredBundle b{e.path().string(), "", 0, 0};
    if (e.is_directory(ec)) {
      std::string manifest = e.path().string() + "/" + kManifest;
      try {
        auto m = nlohmann::json::parse(read_small_file(manifest, 16 << 20));
        if (!m.is_object() || m.value("format", "") != kFormatName) continue;  // not a bundle of ours
        if (owner && m.value("guest", "") != owner->guest) continue;
        if (m.contains("created") && m["created"].is_string()) b.created = m["created"].get<std::string>();
      } catch (const std::exception&) {
        continue;  // no manifest (not complete, or not a bundle): never removed
      }
      b.created_at = epoch_of(b.created);
    } else if (!name.ends_with(kArchiveSuffix) || !e.is_regular_file(ec)) {
      continue;
    } else {
      struct stat st {};
      if (::stat(e.path().c_str(), &st) != 0 || st.st_uid != ::geteuid()) continue;  // another writer's
      b.created_at = static_cast<double>(st.st_mtim.tv_sec) + static_cast<double>(st.st_mtim.tv_nsec) / 1e9;
      b.created = fmt::format("{:.3f}", b.created_at);
    }
    b.bytes = tree_size(e.path());
    out.push_back(std::move(b));
  }
  std::sort(out.begin(), out.end(), [](const StoredBundle& a, const StoredBundle& b) {
    if (a.created_at != b.created_at) return a.created_at < b.created_at;
    return fs::path(a.path).filename().string() < fs::path(b.path).filename().string();
  });
  return out;
}

std::vector<std::string> apply_retention(const std::string& dir, const RetentionPolicy& policy, const BundleOwner& owner) {
  // One pass at a time per directory: two writers of one guest finishing together would each
  // count the other's removals as still there and go on to remove newer bundles. The lock is on
  // the directory itself, so nothing is added to it; it is dropped when the descriptor closes.
  UniqueFd lock(::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (lock) {
    while (::flock(lock.get(), LOCK_EX) != 0 && errno == EINTR) {
    }
  }
  auto bundles = list_bundles(dir, &owner);
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
    if (ec && fs::symlink_status(bundles[i].path).type() != fs::file_type::not_found) continue;  // still there
    if (!ec) removed.push_back(bundles[i].path);  // else another process (an operator) removed it first
    total -= bundles[i].bytes;
    --count;
  }
  return removed;
}

}  // namespace immortal::bundle
