#include "repair/shared_kernel_files.h"

#include "base/content_digest.h"
#include "base/error.h"
#include "base/io.h"
#include "base/unique_fd.h"
#include "repair/shared_file.h"

#include <fmt/format.h>

#include <algorithm>
#include <bit>

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

namespace immortal::vmm {

namespace {

// What keeps a mapped block alive: the mapping, and the shared lock that stops another instance
// from removing the file meanwhile.
struct MappedSharedFile {
  SharedFile file;
  void* at = MAP_FAILED;
  std::size_t bytes = 0;
  ~MappedSharedFile() {
    if (at != MAP_FAILED) ::munmap(at, bytes);
  }
};

}  // namespace

std::string image_symbols_file_name(const std::string& digest) {
  return fmt::format("kernel-symbols-v{}-{}.bin", ImageSymbols::kVersion, digest);
}

std::string kernel_btf_file_name(const std::string& digest) { return fmt::format("kernel-btf-v1-{}.bin", digest); }

namespace {

// The host's file `name` holding `content` (written, then a hole up to a power of two, when no
// instance has written it yet), its first content.size() bytes mapped read-only and held.
std::shared_ptr<MappedSharedFile> map_host_copy(const std::string& dir, const std::string& name,
                                                std::span<const std::uint8_t> content) {
  auto mapped = std::make_shared<MappedSharedFile>();
  mapped->file = SharedFile::acquire(dir, name, [&](const std::string& path) {
    UniqueFd fd(::open(path.c_str(), O_WRONLY | O_CLOEXEC | O_NOFOLLOW));
    if (!fd) fail_os(ExitCode::failure, "open " + path, errno);
    write_all(fd.get(), std::string_view(reinterpret_cast<const char*>(content.data()), content.size()));
    // A repair VM sees it as a PCI window, a power of two long: the rest is a hole.
    if (::ftruncate(fd.get(), static_cast<off_t>(std::bit_ceil(content.size()))) != 0)
      fail_os(ExitCode::failure, "extend " + path, errno);
  });
  if (mapped->file.bytes() != std::bit_ceil(content.size()))
    fail(ExitCode::failure, "{} is {} bytes, not {}", mapped->file.path(), mapped->file.bytes(),
         std::bit_ceil(content.size()));
  UniqueFd fd(::open(mapped->file.path().c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW));
  if (!fd) fail_os(ExitCode::failure, "open " + mapped->file.path(), errno);
  mapped->bytes = content.size();
  mapped->at = ::mmap(nullptr, mapped->bytes, PROT_READ, MAP_SHARED, fd.get(), 0);
  if (mapped->at == MAP_FAILED) fail_os(ExitCode::failure, "map " + mapped->file.path(), errno);
  return mapped;
}

// use(dir): the host's file made usable, else throws. A damaged file under the right name (a
// crash while the host wrote it elsewhere, a hand's edit) is removed once nobody holds it any
// more, and written again.
template <typename Use>
auto with_host_copy(const std::string& dir, std::string* why, Use&& use) -> decltype(use()) {
  for (int round = 0;; ++round) {
    try {
      return use();
    } catch (const std::exception& e) {
      if (round == 0 && remove_unheld_files(dir, "") > 0) continue;
      if (why) *why = e.what();
      return {};
    }
  }
}

}  // namespace

std::shared_ptr<const ImageSymbols> host_image_symbols(const std::string& dir, const ImageSymbols& built,
                                                       std::string* why) {
  const std::string& digest = built.digest();
  return with_host_copy(dir, why, [&]() -> std::shared_ptr<const ImageSymbols> {
    auto mapped = map_host_copy(dir, image_symbols_file_name(digest), built.bytes());
    std::span<const std::uint8_t> bytes(static_cast<const std::uint8_t*>(mapped->at), mapped->bytes);
    std::string refused;
    auto block = ImageSymbols::view(bytes, mapped, &refused);
    if (!block) fail(ExitCode::failure, "{}: {}", mapped->file.path(), refused);
    // Named by its digest, written whole and renamed into place: still, a file that is not what
    // its name says is never used.
    if (block->digest() != digest) fail(ExitCode::failure, "{} does not hold what its name says", mapped->file.path());
    return block;
  });
}

namespace {

// The host's file `name` of exactly `own`'s bytes.
std::optional<HostCopy> host_copy_of(const std::string& dir, const std::string& name, std::span<const std::uint8_t> own,
                                     std::string* why) {
  return with_host_copy(dir, why, [&]() -> std::optional<HostCopy> {
    auto mapped = map_host_copy(dir, name, own);
    std::span<const std::uint8_t> bytes(static_cast<const std::uint8_t*>(mapped->at), mapped->bytes);
    if (!std::equal(bytes.begin(), bytes.end(), own.begin(), own.end()))
      fail(ExitCode::failure, "{} does not hold what its name says", mapped->file.path());
    std::string path = mapped->file.path();
    return HostCopy{bytes, std::move(mapped), std::move(path)};
  });
}

}  // namespace

std::optional<HostCopy> host_kernel_btf(const std::string& dir, const BtfTypes& own, std::string* why) {
  // The bytes libbpf checked in `own`, or the file is not used.
  return host_copy_of(dir, kernel_btf_file_name(own.digest()), own.bytes(), why);
}

std::string kernel_orc_file_name(const std::string& digest) { return fmt::format("kernel-orc-v1-{}.bin", digest); }

std::optional<HostCopy> host_kernel_orc(const std::string& dir, std::span<const std::uint8_t> own, std::string* why) {
  return host_copy_of(dir, kernel_orc_file_name(content_digest(own)), own, why);
}

UniqueFd open_host_kernel_file(const std::string& path, std::uint64_t min_bytes, std::uint64_t& window_bytes) {
  UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW));
  if (!fd) return fd;
  struct stat st {};
  if (::fstat(fd.get(), &st) != 0 || !S_ISREG(st.st_mode) || st.st_size <= 0 ||
      !std::has_single_bit(static_cast<std::uint64_t>(st.st_size)) || static_cast<std::uint64_t>(st.st_size) < min_bytes)
    return {};
  window_bytes = static_cast<std::uint64_t>(st.st_size);
  return fd;
}

}  // namespace immortal::vmm
