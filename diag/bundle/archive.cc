#include "bundle/archive.h"

#include "base/error.h"
#include "base/unique_fd.h"
#include "bundle/bundle_format.h"

#include <archive.h>
#include <archive_entry.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <memory>

namespace immortal::bundle {

namespace fs = std::filesystem;

namespace {

using ArchivePtr = std::unique_ptr<struct archive, int (*)(struct archive*)>;

}  // namespace

void pack_directory(const std::string& dir, const std::string& name, const std::string& path) {
  std::string partial = path + ".partial";
  ArchivePtr a(archive_write_new(), archive_write_free);
  archive_write_set_format_pax_restricted(a.get());
  archive_write_add_filter_zstd(a.get());
  // Created by us, mode 0600 (guest memory inside), never through a planted link.
  ::unlink(partial.c_str());
  UniqueFd out(::open(partial.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0600));
  if (!out) fail_os(ExitCode::failure, "create " + partial, errno);
  if (archive_write_open_fd(a.get(), out.get()) != ARCHIVE_OK)
    fail(ExitCode::failure, "cannot create {}: {}", partial, archive_error_string(a.get()));
  std::vector<char> buf(1 << 20);
  std::error_code ec;
  std::vector<fs::path> entries;
  for (const auto& e : fs::recursive_directory_iterator(dir, ec)) entries.push_back(e.path());
  std::sort(entries.begin(), entries.end());
  for (const auto& p : entries) {
    struct stat st {};
    if (::stat(p.c_str(), &st) != 0) continue;
    std::unique_ptr<archive_entry, void (*)(archive_entry*)> entry(archive_entry_new(), archive_entry_free);
    std::string inner = name + "/" + fs::relative(p, dir).string();
    archive_entry_set_pathname(entry.get(), inner.c_str());
    archive_entry_set_mtime(entry.get(), st.st_mtime, 0);
    if (S_ISDIR(st.st_mode)) {
      archive_entry_set_filetype(entry.get(), AE_IFDIR);
      archive_entry_set_perm(entry.get(), 0700);
      archive_write_header(a.get(), entry.get());
      continue;
    }
    if (!S_ISREG(st.st_mode)) continue;
    archive_entry_set_filetype(entry.get(), AE_IFREG);
    archive_entry_set_perm(entry.get(), 0600);
    archive_entry_set_size(entry.get(), st.st_size);
    if (archive_write_header(a.get(), entry.get()) != ARCHIVE_OK)
      fail(ExitCode::failure, "{}: {}", partial, archive_error_string(a.get()));
    std::ifstream in(p, std::ios::binary);
    while (in) {
      in.read(buf.data(), static_cast<std::streamsize>(buf.size()));
      if (in.gcount() > 0 && archive_write_data(a.get(), buf.data(), static_cast<std::size_t>(in.gcount())) < 0)
        fail(ExitCode::failure, "{}: {}", partial, archive_error_string(a.get()));
    }
  }
  if (archive_write_close(a.get()) != ARCHIVE_OK) fail(ExitCode::failure, "{}: {}", partial, archive_error_string(a.get()));
  ::fsync(out.get());
  if (::rename(partial.c_str(), path.c_str()) != 0) fail_os(ExitCode::failure, "rename " + partial, errno);
}

std::string unpack_archive(const std::string& archive, const std::string& dest, std::uint64_t max_bytes,
                           const std::function<void(std::uint64_t)>& progress) {
  ArchivePtr a(archive_read_new(), archive_read_free);
  archive_read_support_format_tar(a.get());
  archive_read_support_filter_zstd(a.get());
  archive_read_support_filter_none(a.get());
  if (archive_read_open_filename(a.get(), archive.c_str(), 1 << 20) != ARCHIVE_OK)
    fail(ExitCode::bad_input, "{}: not a bundle archive: {}", archive, archive_error_string(a.get()));
  std::string top;
  std::uint64_t total = 0;
  std::vector<char> buf(1 << 20);
  archive_entry* entry = nullptr;
  for (std::size_t count = 0;; ++count) {
    int r = archive_read_next_header(a.get(), &entry);
    if (r == ARCHIVE_EOF) break;
    if (r != ARCHIVE_OK) fail(ExitCode::bad_input, "{}: damaged archive: {}", archive, archive_error_string(a.get()));
    if (count > 100000) fail(ExitCode::bad_input, "{}: too many entries for a bundle", archive);
    const char* raw = archive_entry_pathname(entry);
    std::string path = raw ? raw : "";
    fs::path rel = fs::path(path).lexically_normal();
    if (path.empty() || rel.is_absolute() || rel.string().rfind("..", 0) == 0 || rel.begin() == rel.end())
      fail(ExitCode::bad_input, "{}: unsafe path \"{}\" in the archive", archive, path);
    std::string first = rel.begin()->string();
    if (top.empty()) top = first;
    if (first != top || top == "." || top.empty())
      fail(ExitCode::bad_input, "{}: a bundle archive holds one top-level directory", archive);
    fs::path out = fs::path(dest) / rel;
    auto type = archive_entry_filetype(entry);
    if (type == AE_IFDIR) {
      fs::create_directories(out);
      continue;
    }
    if (type != AE_IFREG) fail(ExitCode::bad_input, "{}: \"{}\" is not a regular file", archive, path);
    fs::create_directories(out.parent_path());
    int fd = ::open(out.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0644);
    if (fd < 0) fail(ExitCode::bad_input, "{}: cannot unpack \"{}\" (listed twice?)", archive, path);
    for (;;) {
      la_ssize_t n = archive_read_data(a.get(), buf.data(), buf.size());
      if (n < 0) {
        ::close(fd);
        fail(ExitCode::bad_input, "{}: damaged archive: {}", archive, archive_error_string(a.get()));
      }
      if (n == 0) break;
      total += static_cast<std::uint64_t>(n);
      if (total > max_bytes) {
        ::close(fd);
        fail(ExitCode::bad_input, "{}: unpacks to more than {} bytes", archive, max_bytes);
      }
      if (::write(fd, buf.data(), static_cast<std::size_t>(n)) != n) {
        int err = errno;
        ::close(fd);
        fail_os(ExitCode::failure, "unpacking " + path, err);
      }
      if (progress) progress(total);
    }
    ::close(fd);
  }
  if (top.empty()) fail(ExitCode::bad_input, "{}: an empty archive", archive);
  return (fs::path(dest) / top).string();
}

}  // namespace immortal::bundle
