// Opens a bundle for offline diagnosis — a directory or a NAME.tar.zst — and checks it before
// anything trusts it: the manifest's format and version, that every file it lists is there
// with its size and SHA-256, and that the report parses. A bundle comes from anywhere: every
// problem is an Error with a message that says what is wrong (bad_input, or unsupported for a
// format version newer than this reader).
#pragma once

#include <nlohmann/json.hpp>

#include <cstdint>
#include <functional>
#include <future>
#include <optional>
#include <string>

namespace immortal::bundle {

class OpenedBundle {
 public:
  // progress(what, done, total) while verifying or unpacking large files.
  using Progress = std::function<void(const std::string& what, std::uint64_t done, std::uint64_t total)>;
  // now: every file is checked against the manifest's SHA-256 before open returns. beside: the
  // large ones (the vmcore) are checked on a thread while the caller reads the bundle, and
  // verified() says whether they matched: call it before showing anything read from them.
  enum class Verification { now, beside };
  static OpenedBundle open(const std::string& path, const Progress& progress = {}, Verification verification = Verification::now);
  // Waits for the checks open left running, if any; throws Error(ExitCode::bad_input) naming a
  // file that does not match. Idempotent.
  void verified();
  ~OpenedBundle();
  OpenedBundle(OpenedBundle&&) noexcept;
  OpenedBundle& operator=(OpenedBundle&&) = delete;
  OpenedBundle(const OpenedBundle&) = delete;

  const std::string& dir() const { return dir_; }  // the bundle's directory (unpacked for archives)
  std::string file(const std::string& name) const { return dir_ + "/" + name; }
  bool has(const std::string& name) const;         // listed in the manifest
  const nlohmann::json& manifest() const { return manifest_; }
  const nlohmann::json& report() const { return report_; }

  // Is path a bundle (a directory with a manifest, a .partial directory, or a .tar.zst)?
  static bool looks_like_bundle(const std::string& path);

 private:
  OpenedBundle() = default;
  std::string dir_;
  std::string scratch_;  // temporary directory an archive was unpacked into (removed with us)
  nlohmann::json manifest_, report_;
  std::future<std::string> pending_;  // the checks left running: "" or what did not match
};

// Reads a small text/JSON file of a bundle with a size limit (they are inputs too).
std::string read_small_file(const std::string& path, std::uint64_t max_bytes);

}  // namespace immortal::bundle
