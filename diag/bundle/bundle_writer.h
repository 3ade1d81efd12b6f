// Writes a bundle atomically: every file goes into PARENT/.NAME.partial, is fsync'd, then
// manifest.json (names, sizes, SHA-256 of every file) is written last and the directory renamed
// to PARENT/NAME and the parent fsync'd. A writer killed at any point leaves at most a
// ".partial" directory, which readers refuse and the next writer in PARENT removes.
#pragma once

#include <nlohmann/json.hpp>

#include <filesystem>
#include <string>
#include <string_view>
#include <vector>

namespace immortal::bundle {

class BundleWriter {
 public:
  // Throws Error when PARENT cannot be created or written.
  BundleWriter(std::string parent, std::string name);
  ~BundleWriter();  // an uncommitted bundle is removed
  BundleWriter(const BundleWriter&) = delete;
  BundleWriter& operator=(const BundleWriter&) = delete;

  // Where the caller may write a file itself (then call add_written).
  std::string path_of(const std::string& file) const { return partial_ + "/" + file; }
  void add(const std::string& file, std::string_view content);
  void add_written(const std::string& file);
  // Adds every regular file under path_of(dir), written there by the caller.
  void add_written_tree(const std::string& dir);

  // Writes the manifest (fields + format + files) and publishes the bundle; returns its path.
  // With archive, the directory is then packed into PARENT/NAME.tar.zst (also atomically) and
  // the path returned is the archive's.
  std::string commit(nlohmann::json fields, bool archive);

  const std::string& name() const { return name_; }

 private:
  struct File {
    std::string name;
    std::uint64_t bytes;
    std::string sha256;
  };
  std::string parent_, name_, partial_;
  std::vector<File> files_;
  bool committed_ = false;
};

// SHA-256 of a file as lowercase hex; progress(done, total) now and then.
std::string sha256_file(const std::string& path, std::uint64_t* bytes = nullptr);

// Removes the `.NAME.PID.partial` directories of bundles named NAME_PREFIX… that writers which
// died left in parent (another writer's partial, one still alive, is left alone).
std::vector<std::string> remove_stale_partials(const std::string& parent, const std::string& name_prefix);
// mkdir -p with mode 0700, inside a bundle being written.
void make_inner_dirs(const std::filesystem::path& dir);

}  // namespace immortal::bundle
