#include "bundle/bundle_writer.h"

#include "base/error.h"
#include "base/io.h"
#include "base/private_dir.h"
#include "base/unique_fd.h"
#include "bundle/archive.h"
#include "bundle/bundle_format.h"

#include <fcntl.h>
#include <openssl/evp.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <memory>

namespace immortal::bundle {

namespace fs = std::filesystem;

namespace {

void fsync_path(const std::string& path, bool directory) {
  UniqueFd fd(::open(path.c_str(), (directory ? O_RDONLY | O_DIRECTORY : O_RDONLY) | O_CLOEXEC));
  if (!fd || ::fsync(fd.get()) != 0) fail_os(ExitCode::failure, "fsync " + path, errno);
}

}  // namespace

std::string sha256_file(const std::string& path, std::uint64_t* bytes) {
  UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd) fail_os(ExitCode::bad_input, "open " + path, errno);
  std::unique_ptr<EVP_MD_CTX, decltype(&EVP_MD_CTX_free)> ctx(EVP_MD_CTX_new(), EVP_MD_CTX_free);
  if (!ctx || EVP_DigestInit_ex(ctx.get(), EVP_sha256(), nullptr) != 1) fail(ExitCode::failure, "SHA-256 is unavailable");
  std::vector<unsigned char> buf(1 << 20);
  std::uint64_t total = 0;
  for (;;) {
    ssize_t n = ::read(fd.get(), buf.data(), buf.size());
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) fail_os(ExitCode::bad_input, "read " + path, errno);
    if (n == 0) break;
    EVP_DigestUpdate(ctx.get(), buf.data(), static_cast<std::size_t>(n));
    total += static_cast<std::uint64_t>(n);
  }
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  EVP_DigestFinal_ex(ctx.get(), digest, &len);
  std::string hex;
  for (unsigned int i = 0; i < len; ++i) hex += fmt::format("{:02x}", digest[i]);
  if (bytes) *bytes = total;
  return hex;
}

std::vector<std::string> remove_stale_partials(const std::string& parent, const std::string& name_prefix) {
  std::vector<std::string> removed;
  std::error_code ec;
  std::string prefix = std::string(kPartialPrefix) + name_prefix;
  for (const auto& e : fs::directory_iterator(parent, ec)) {
    std::string n = e.path().filename().string();
    if (n.rfind(prefix, 0) != 0 || !n.ends_with(kPartialSuffix) || e.is_symlink(ec)) continue;
    // .NAME.PID.partial: removed once that writer is gone. Without a pid (an older writer's):
    // once it is an hour old.
    std::string stem = n.substr(0, n.size() - std::string(kPartialSuffix).size());
    auto dot = stem.rfind('.');
    long pid = 0;
    if (dot != std::string::npos && dot > 0) {
      try {
        std::size_t used = 0;
        pid = std::stol(stem.substr(dot + 1), &used);
        if (used != stem.size() - dot - 1) pid = 0;
      } catch (const std::exception&) {
        pid = 0;
      }
    }
    bool gone;
    if (pid > 0) {
      gone = ::kill(static_cast<pid_t>(pid), 0) != 0 && errno == ESRCH;
    } else {
      auto age = fs::file_time_type::clock::now() - fs::last_write_time(e.path(), ec);
      gone = !ec && age > std::chrono::hours(1);
    }
    if (!gone) continue;
    fs::remove_all(e.path(), ec);
    removed.push_back(n);
  }
  return removed;
}

void make_inner_dirs(const fs::path& dir) {
  std::error_code ec;
  if (fs::is_directory(dir, ec)) return;
  make_inner_dirs(dir.parent_path());
  if (::mkdir(dir.c_str(), 0700) != 0 && errno != EEXIST) fail_os(ExitCode::failure, "create " + dir.string(), errno);
}

BundleWriter::BundleWriter(std::string parent, std::string name) : parent_(std::move(parent)), name_(std::move(name)) {
  if (name_.empty() || name_.find('/') != std::string::npos || name_[0] == '.')
    fail(ExitCode::usage, "bad bundle name \"{}\"", name_);
  ensure_private_directory(parent_, "the bundle directory");
  // .NAME.PID.partial: whose it is, so that only a dead writer's is ever removed.
  partial_ = fmt::format("{}/{}{}.{}{}", parent_, kPartialPrefix, name_, ::getpid(), kPartialSuffix);
  std::error_code ec;
  fs::remove_all(partial_, ec);
  if (::mkdir(partial_.c_str(), 0700) != 0) fail_os(ExitCode::failure, "create " + partial_, errno);
}

BundleWriter::~BundleWriter() {
  if (!committed_) {
    std::error_code ec;
    fs::remove_all(partial_, ec);
  }
}

void BundleWriter::add(const std::string& file, std::string_view content) {
  std::string path = path_of(file);
  make_inner_dirs(fs::path(path).parent_path());
  UniqueFd fd(::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0600));
  if (!fd) fail_os(ExitCode::failure, "create " + path, errno);
  write_all(fd.get(), content);
  add_written(file);
}

void BundleWriter::add_written(const std::string& file) {
  std::string path = path_of(file);
  fsync_path(path, false);
  File f{file, 0, ""};
  f.sha256 = sha256_file(path, &f.bytes);
  files_.push_back(std::move(f));
}

void BundleWriter::add_written_tree(const std::string& dir) {
  std::error_code ec;
  std::vector<std::string> files;
  for (const auto& e : fs::recursive_directory_iterator(path_of(dir), ec))
    if (e.is_regular_file()) files.push_back(dir + "/" + fs::relative(e.path(), path_of(dir)).string());
  if (ec) fail(ExitCode::failure, "cannot read {}: {}", path_of(dir), ec.message());
  std::sort(files.begin(), files.end());
  for (const auto& f : files) add_written(f);
}

std::string BundleWriter::commit(nlohmann::json fields, bool archive) {
  nlohmann::json files = nlohmann::json::array();
  for (const auto& f : files_) files.push_back({{"name", f.name}, {"bytes", f.bytes}, {"sha256", f.sha256}});
  fields["format"] = kFormatName;
  fields["version"] = kFormatVersion;
  fields["name"] = name_;
  fields["files"] = files;
  {
    std::string path = path_of(kManifest);
    UniqueFd fd(::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0600));
    if (!fd) fail_os(ExitCode::failure, "create " + path, errno);
    write_all(fd.get(), fields.dump(2, ' ', false, nlohmann::json::error_handler_t::replace) + "\n");
    if (::fsync(fd.get()) != 0) fail_os(ExitCode::failure, "fsync " + path, errno);
  }
  // Subdirectories first, then the bundle directory itself.
  std::error_code ec;
  for (const auto& e : fs::recursive_directory_iterator(partial_, ec))
    if (e.is_directory()) fsync_path(e.path().string(), true);
  fsync_path(partial_, true);
  std::string final_dir = parent_ + "/" + name_;
  fs::remove_all(final_dir, ec);
  if (::rename(partial_.c_str(), final_dir.c_str()) != 0) fail_os(ExitCode::failure, "rename " + partial_, errno);
  committed_ = true;
  fsync_path(parent_, true);
  if (!archive) return final_dir;
  std::string packed = final_dir + kArchiveSuffix;
  // Packed under a hidden name first (a dead writer's leftover is removed as stale), then renamed.
  std::string hidden = parent_ + "/" + kPartialPrefix + name_ + kArchiveSuffix;
  pack_directory(final_dir, name_, hidden);
  if (::rename(hidden.c_str(), packed.c_str()) != 0) fail_os(ExitCode::failure, "rename " + hidden, errno);
  fs::remove_all(final_dir, ec);
  fsync_path(parent_, true);
  return packed;
}

}  // namespace immortal::bundle
