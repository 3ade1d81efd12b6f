#include "bundle/bundle_reader.h"

#include "base/error.h"
#include "bundle/archive.h"
#include "bundle/bundle_format.h"
#include "bundle/bundle_writer.h"

#include <fmt/format.h>

#include <sys/stat.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <set>

namespace immortal::bundle {

namespace fs = std::filesystem;

namespace {
constexpr std::uint64_t kMaxManifest = 16 << 20;
constexpr std::uint64_t kMaxReport = 64 << 20;
constexpr std::uint64_t kMaxUnpacked = 1ull << 40;
// Files larger than this are checked on a thread with Verification::beside (the vmcore; the
// small ones are read at once, so they are checked first).
constexpr std::uint64_t kCheckBesideBytes = 16u << 20;

// "" when file's SHA-256 is sha, else what is wrong, naming the bundle and the file.
std::string hash_mismatch(const std::string& bundle, const std::string& name, const std::string& file, const std::string& sha) {
  if (sha256_file(file) == sha) return "";
  return fmt::format("{}: {} does not match its SHA-256 in the manifest (damaged)", bundle, name);
}
}  // namespace

std::string read_small_file(const std::string& path, std::uint64_t max_bytes) {
  std::error_code ec;
  auto size = fs::file_size(path, ec);
  if (ec) fail(ExitCode::bad_input, "cannot read {}: {}", path, ec.message());
  if (size > max_bytes) fail(ExitCode::bad_input, "{} is too large ({} bytes; at most {} expected)", path, size, max_bytes);
  std::ifstream in(path, std::ios::binary);
  std::string text(size, '\0');
  if (!in.read(text.data(), static_cast<std::streamsize>(size))) fail(ExitCode::bad_input, "cannot read {}", path);
  return text;
}

bool OpenedBundle::looks_like_bundle(const std::string& path) {
  std::error_code ec;
  if (fs::is_directory(path, ec)) return true;
  return path.ends_with(kArchiveSuffix);
}

OpenedBundle::OpenedBundle(OpenedBundle&& o) noexcept
    : dir_(std::move(o.dir_)), scratch_(std::move(o.scratch_)), manifest_(std::move(o.manifest_)), report_(std::move(o.report_)),
      pending_(std::move(o.pending_)) {
  o.scratch_.clear();
}

OpenedBundle::~OpenedBundle() {
  if (pending_.valid()) pending_.wait();  // it reads files in scratch_
  if (!scratch_.empty()) {
    std::error_code ec;
    fs::remove_all(scratch_, ec);
  }
}

bool OpenedBundle::has(const std::string& name) const {
  for (const auto& f : manifest_.value("files", nlohmann::json::array()))
    if (f.is_object() && f.value("name", "") == name) return true;
  return false;
}

void OpenedBundle::verified() {
  if (!pending_.valid()) return;
  std::string problem = pending_.get();
  if (!problem.empty()) fail(ExitCode::bad_input, "{}", problem);
}

OpenedBundle OpenedBundle::open(const std::string& path, const Progress& progress, Verification verification) {
  OpenedBundle b;
  std::error_code ec;
  std::string base = fs::path(path).filename().string();
  if (base.empty()) base = fs::path(path).parent_path().filename().string();
  if (base.rfind(kPartialPrefix, 0) == 0 && base.ends_with(kPartialSuffix))
    fail(ExitCode::bad_input, "{} is a bundle that was never completed (its writer stopped while writing it)", path);
  if (!fs::exists(path, ec)) fail(ExitCode::bad_input, "{}: no such bundle", path);
  if (fs::is_directory(path, ec)) {
    b.dir_ = path;
  } else if (path.ends_with(kArchiveSuffix)) {
    const char* tmp = std::getenv("TMPDIR");
    std::string templ = std::string(tmp && *tmp ? tmp : "/tmp") + "/immortal-bundle-XXXXXX";
    if (!::mkdtemp(templ.data())) fail_os(ExitCode::failure, "mkdtemp", errno);
    b.scratch_ = templ;
    b.dir_ = unpack_archive(path, b.scratch_, kMaxUnpacked, [&](std::uint64_t done) {
      if (progress) progress("unpacking", done, 0);
    });
  } else {
    fail(ExitCode::bad_input, "{} is neither a bundle directory nor a {} archive", path, kArchiveSuffix);
  }

  std::string manifest_path = b.file(kManifest);
  if (!fs::exists(manifest_path, ec))
    fail(ExitCode::bad_input, "{} has no {}: not a bundle, or an incomplete one", path, kManifest);
  try {
    b.manifest_ = nlohmann::json::parse(read_small_file(manifest_path, kMaxManifest));
  } catch (const nlohmann::json::exception& e) {
    fail(ExitCode::bad_input, "{}: {} is not valid JSON: {}", path, kManifest, e.what());
  }
  const auto& m = b.manifest_;
  if (!m.is_object() || m.value("format", "") != std::string(kFormatName))
    fail(ExitCode::bad_input, "{}: {} does not describe an {}", path, kManifest, kFormatName);
  if (!m.contains("version") || !m["version"].is_number_integer())
    fail(ExitCode::bad_input, "{}: {} has no format version", path, kManifest);
  int version = m["version"].get<int>();
  if (version > kFormatVersion)
    fail(ExitCode::unsupported, "{} is a bundle of format version {}, newer than this immortal reads ({}): use a newer immortal",
         path, version, kFormatVersion);
  if (version < 1) fail(ExitCode::bad_input, "{}: bundle format version {} does not exist", path, version);
  if (!m.contains("files") || !m["files"].is_array()) fail(ExitCode::bad_input, "{}: {} lists no files", path, kManifest);

  std::set<std::string> seen;
  struct Later {
    std::string name, file, sha;
  };
  std::vector<Later> later;  // checked beside the reader
  for (const auto& f : m["files"]) {
    if (!f.is_object() || !f.contains("name") || !f["name"].is_string() || !f.contains("bytes") ||
        !f["bytes"].is_number_unsigned() || !f.contains("sha256") || !f["sha256"].is_string())
      fail(ExitCode::bad_input, "{}: a malformed entry in {}'s file list", path, kManifest);
    std::string name = f["name"].get<std::string>();
    fs::path rel = fs::path(name).lexically_normal();
    if (name.empty() || rel.is_absolute() || rel.string().rfind("..", 0) == 0 || !seen.insert(rel.string()).second)
      fail(ExitCode::bad_input, "{}: {} names an unsafe or repeated file \"{}\"", path, kManifest, name);
    std::string file = b.file(rel.string());
    struct stat st {};
    if (::lstat(file.c_str(), &st) != 0 || !S_ISREG(st.st_mode))
      fail(ExitCode::bad_input, "{}: {} is missing (the bundle is incomplete)", path, name);
    auto want = f["bytes"].get<std::uint64_t>();
    if (static_cast<std::uint64_t>(st.st_size) != want)
      fail(ExitCode::bad_input, "{}: {} has {} bytes, the manifest says {} (truncated or changed)", path, name,
           st.st_size, want);
    if (verification == Verification::beside && want > kCheckBesideBytes) {
      later.push_back({name, file, f["sha256"].get<std::string>()});
      continue;
    }
    if (progress && want > (64u << 20)) progress("verifying " + name, 0, want);
    if (std::string problem = hash_mismatch(path, name, file, f["sha256"].get<std::string>()); !problem.empty())
      fail(ExitCode::bad_input, "{}", problem);
    if (progress && want > (64u << 20)) progress("verifying " + name, want, want);
  }
  if (!seen.count(kReportJson)) fail(ExitCode::bad_input, "{}: the bundle has no {}", path, kReportJson);
  try {
    b.report_ = nlohmann::json::parse(read_small_file(b.file(kReportJson), kMaxReport));
  } catch (const nlohmann::json::exception& e) {
    fail(ExitCode::bad_input, "{}: {} is not valid JSON: {}", path, kReportJson, e.what());
  }
  if (!b.report_.is_object()) fail(ExitCode::bad_input, "{}: {} is not a JSON object", path, kReportJson);
  if (!later.empty())
    b.pending_ = std::async(std::launch::async, [later = std::move(later), path]() -> std::string {
      for (const auto& l : later) {
        try {
          if (std::string problem = hash_mismatch(path, l.name, l.file, l.sha); !problem.empty()) return problem;
        } catch (const std::exception& e) {
          return fmt::format("{}: {} cannot be verified: {}", path, l.name, e.what());
        }
      }
      return "";
    });
  return b;
}

}  // namespace immortal::bundle
