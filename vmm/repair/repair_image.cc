#include "repair/repair_image.h"

#include "repair/agent_process.h"
#include "repair/shared_file.h"

#include "bundle/bundle_writer.h"

#include "base/content_digest.h"
#include "base/error.h"
#include "base/zstd_frame.h"
#include "base/sealed_memfd.h"
#include "engine/text_precheck.h"
#include "kernel/symbols.h"
#include "profile/guest_profile.h"
#include "protocol/payload.h"

#include <archive.h>
#include <archive_entry.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <map>
#include <vector>
#include <fstream>
#include <memory>

namespace immortal::vmm {

namespace fs = std::filesystem;

namespace {

using ArchivePtr = std::unique_ptr<struct archive, int (*)(struct archive*)>;
using EntryPtr = std::unique_ptr<struct archive_entry, void (*)(struct archive_entry*)>;

class Cpio {
 public:
  explicit Cpio(const std::string& path) : a_(archive_write_new(), archive_write_free) {
    archive_write_set_format_cpio_newc(a_.get());
    // gzip: every kernel that can unpack an initramfs reads it (zstd is newer than some the
    // repair VM may boot). A third of the size in the runtime directory and in QEMU, which maps
    // the file; the repair VM's own RAM is no smaller (its kernel unpacks the whole agent).
    // Level 1: 10 % larger than the default, in a third of the time (≈ 0.1 s for 9.5 MB).
    if (archive_write_add_filter_gzip(a_.get()) != ARCHIVE_OK ||
        archive_write_set_filter_option(a_.get(), "gzip", "compression-level", "1") != ARCHIVE_OK)
      fail(ExitCode::failure, "{}: {}", path, archive_error_string(a_.get()));
    if (archive_write_open_filename(a_.get(), path.c_str()) != ARCHIVE_OK)
      fail(ExitCode::failure, "{}: {}", path, archive_error_string(a_.get()));
  }
  void directory(const std::string& name) { header(name, AE_IFDIR, 0755, 0, 0); }
  void device(const std::string& name, unsigned major, unsigned minor) {
    header(name, AE_IFCHR, 0600, 0, makedev(major, minor));
  }
  void file(const std::string& name, const std::string& source, int mode) {
    std::ifstream in(source, std::ios::binary);
    if (!in) fail(ExitCode::failure, "cannot read {}", source);
    auto size = static_cast<std::uint64_t>(fs::file_size(source));
    header(name, AE_IFREG, mode, size, 0);
    std::vector<char> buf(1 << 20);
    while (in) {
      in.read(buf.data(), static_cast<std::streamsize>(buf.size()));
      if (in.gcount() > 0 && archive_write_data(a_.get(), buf.data(), static_cast<std::size_t>(in.gcount())) < 0)
        fail(ExitCode::failure, "writing the repair image: {}", archive_error_string(a_.get()));
    }
  }
  void close() {
    if (archive_write_close(a_.get()) != ARCHIVE_OK)
      fail(ExitCode::failure, "writing the repair image: {}", archive_error_string(a_.get()));
  }

 private:
  void header(const std::string& name, unsigned type, int mode, std::uint64_t size, dev_t rdev) {
    EntryPtr e(archive_entry_new(), archive_entry_free);
    archive_entry_set_pathname(e.get(), name.c_str());
    archive_entry_set_filetype(e.get(), type);
    archive_entry_set_perm(e.get(), static_cast<mode_t>(mode));
    archive_entry_set_size(e.get(), static_cast<la_int64_t>(size));
    archive_entry_set_nlink(e.get(), type == AE_IFDIR ? 2 : 1);
    if (rdev) archive_entry_set_rdev(e.get(), rdev);
    archive_entry_set_ino(e.get(), ++inode_);
    if (archive_write_header(a_.get(), e.get()) != ARCHIVE_OK)
      fail(ExitCode::failure, "writing the repair image: {}", archive_error_string(a_.get()));
  }
  ArchivePtr a_;
  la_int64_t inode_ = 0;
};

// The repair VM's initramfs: the static agent as /init, and what it needs before it mounts anything.
void write_initrd(const std::string& path, const std::string& agent) {
  Cpio cpio(path);
  for (const char* d : {"dev", "proc", "sys"}) cpio.directory(d);
  cpio.device("dev/console", 5, 1);
  cpio.file("init", agent, 0755);
  cpio.close();
}

// The shared initramfs's name: the agent's digest, and the layout's version (raised whenever
// write_initrd changes what it writes), so that a file is only ever shared by identical ones.
std::string initrd_name(const std::string& agent) { return "initrd-v1-" + bundle::sha256_file(agent).substr(0, 32) + ".img"; }

// The payload archive: the profile as it is now (a newer one may replace the instance's copy at
// any time), the healthy copy, and guest RAM's layout (inside the repair VM the RAM window is the
// file itself, so file offsets are window offsets). What the host's files hold of the kernel's
// profile (`part`) is left out when they hold exactly this profile's: the kernel image's lines of
// kallsyms, the kernel's BTF. repair.json then says where the agents find them, by digest.
std::string payload_archive(const std::string& profile_dir, const repair::HealthyImage& healthy, const Machine::RamFile& ram,
                            const PayloadKernelPart& part, KernelPartsFromHost& parts) {
  std::map<std::string, std::string> files;
  nlohmann::json layout = ram_layout_json(ram);
  // A stored file's bytes, unpacked (NAME.zst is one zstd frame).
  auto unpacked = [](const std::string& name, std::string bytes) {
    return name.ends_with(".zst") ? zstd_unpack(bytes, GuestProfile::kMaxFileSize, name) : bytes;
  };
  // The profile's files packed (8.5 MiB of Debian 6.1's kallsyms and BTF take 2.1): the payload
  // stays in memory for as long as the guest runs, and the agents read the files once, to parse
  // them. Level 1: written again after every module load, on the way to the repair path being
  // ready again.
  for (auto& [name, bytes] : GuestProfile::read_stored_files(profile_dir)) {
    std::string plain = name.ends_with(".zst") ? name.substr(0, name.size() - 4) : name;
    if (plain == "kallsyms" && part.symbols) {
      if (auto rest = kallsyms_without_image(unpacked(name, bytes), *part.symbols, part.symbols_base)) {
        parts.names.push_back("kernel image symbols");
        parts.digests.symbols = part.symbols->digest();
        layout["kernel_symbols"] = {{"digest", parts.digests.symbols}, {"base", part.symbols_base},
                                    {"symbols", part.symbols->size()}};
        files.emplace("profile/kallsyms.zst", zstd_pack(*rest, 1));
        continue;
      }
      parts.kept_why.push_back("kernel image symbols: the host's file holds another kernel's");
    }
    if (plain == "btf/vmlinux" && !part.btf_digest.empty()) {
      std::string raw = unpacked(name, bytes);
      auto span = std::span(reinterpret_cast<const std::uint8_t*>(raw.data()), raw.size());
      if (raw.size() == part.btf_bytes && content_digest(span) == part.btf_digest) {
        parts.names.push_back("kernel BTF");
        parts.digests.btf = part.btf_digest;
        layout["kernel_btf"] = {{"digest", part.btf_digest}, {"bytes", part.btf_bytes}};
        continue;
      }
      parts.kept_why.push_back("kernel BTF: the host's file holds another kernel's");
    }
    if (name.ends_with(".zst")) files.emplace("profile/" + name, std::move(bytes));  // packed already
    else files.emplace("profile/" + name + ".zst", zstd_pack(std::exchange(bytes, {}), 1));
  }
  // The image's ORC tables: not in the payload, but read from the guest's memory otherwise.
  if (!part.orc_digest.empty()) {
    parts.names.push_back("kernel image unwind tables");
    parts.digests.orc = part.orc_digest;
    layout["kernel_orc"] = {{"digest", part.orc_digest}, {"bytes", part.orc_bytes}};
  }
  // The healthy copy packed too (24 MB of Debian 6.1's code take 10.6), a frame per 16 KiB: the
  // engines unpack only the pieces a crash made them compare, the supervisor hashes it once
  // (digest_pieces) and unpacks what a restore or a bundle takes from it.
  auto copy = repair::packed_files(healthy);
  files.emplace("healthy/healthy.json", std::move(copy.index));
  files.emplace("healthy/healthy.bin", std::move(copy.blob));
  files.emplace("repair.json", layout.dump(1) + "\n");
  return repair::write_payload(files);
}

void write_at(int fd, std::uint64_t offset, const std::string& bytes) {
  for (std::size_t at = 0; at < bytes.size();) {
    ssize_t n = ::pwrite(fd, bytes.data() + at, bytes.size() - at, static_cast<off_t>(offset + at));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) fail_os(ExitCode::failure, "write the repair payload", errno);
    at += static_cast<std::size_t>(n);
  }
}

// Where a file that ships with immortal may be, in order: `installed` beside this executable (an
// install), `in_build_tree` from the build directory (this executable is its vmm/immortal), and
// ../libexec/immortal/`installed`. None when this executable's path cannot be read (not paths
// relative to the current directory).
std::vector<fs::path> shipped_file_places(const std::string& installed, const fs::path& in_build_tree) {
  std::error_code ec;
  fs::path self = fs::read_symlink("/proc/self/exe", ec).parent_path();
  if (ec || self.empty()) return {};
  return {self / installed, self.parent_path() / in_build_tree, self.parent_path() / "libexec" / "immortal" / installed};
}

}  // namespace

std::string find_repair_agent(const std::string& configured) {
  std::vector<std::string> tried;
  auto usable = [&](const std::string& p) {
    tried.push_back(p);
    return !p.empty() && ::access(p.c_str(), X_OK) == 0;
  };
  if (!configured.empty()) {
    if (usable(configured)) return configured;
    fail(ExitCode::bad_input, "the repair agent {} is not an executable file", configured);
  }
  if (const char* env = std::getenv("IMMORTAL_REPAIR_AGENT"); env && *env) {
    if (usable(env)) return env;
    fail(ExitCode::bad_input, "IMMORTAL_REPAIR_AGENT={} is not an executable file", env);
  }
  for (const auto& p : shipped_file_places("immortal-repair-agent", fs::path("repair-image") / "immortal-repair-agent"))
    if (usable(p.string())) return p.string();
  fail(ExitCode::bad_input, "no repair agent found (looked at {}); build it (ninja) or set IMMORTAL_REPAIR_AGENT",
       fmt::format("{}", fmt::join(tried, ", ")));
}

std::string find_repair_kernel() {
  if (const char* env = std::getenv("IMMORTAL_REPAIR_KERNEL"); env && *env) {
    if (::access(env, R_OK) == 0) return env;
    fail(ExitCode::bad_input, "IMMORTAL_REPAIR_KERNEL={} cannot be read: {}", env, std::strerror(errno));
  }
  for (const auto& p : shipped_file_places("repair-vmlinuz", fs::path("repair-kernel") / "bzImage"))
    if (::access(p.c_str(), R_OK) == 0) return p.string();
  return "";
}

RepairImage build_repair_image(const std::string& dir, const std::string& shared_dir, const std::string& agent, const std::string& profile_dir,
                               const repair::HealthyImage& healthy, const Machine::RamFile& ram, const PayloadKernelPart& part) {
  RepairImage image;
  // What an earlier version staged here (the inputs were files then).
  std::error_code ec;
  for (const char* old : {"profile", "healthy", "repair.json", "inline.json"}) fs::remove_all(dir + "/" + old, ec);

  // One initramfs per host and agent when the instances share a directory: every repair QEMU maps
  // the file it boots, so they share its pages. The instance's own file otherwise, or when the
  // shared one cannot be had (said in the image's status).
  if (!shared_dir.empty()) {
    try {
      image.initrd_file = SharedFile::acquire(shared_dir, initrd_name(agent),
                                              [&](const std::string& path) { write_initrd(path, agent); });
      image.initrd = image.initrd_file.path();
      image.initrd_bytes = image.initrd_file.bytes();
      fs::remove(dir + "/initrd.img", ec);  // where it was kept before
    } catch (const Error& e) {
      image.initrd_problem = e.what();
    }
  }
  if (image.initrd.empty()) {
    image.initrd = dir + "/initrd.img";
    std::string partial = image.initrd + ".partial";
    write_initrd(partial, agent);
    fs::rename(partial, image.initrd);
    image.initrd_bytes = fs::file_size(image.initrd);
  }

  std::string archive = payload_archive(profile_dir, healthy, ram, part, image.from_host);
  image.payload_bytes = archive.size();
  image.slot_bytes = std::max<std::uint64_t>(std::bit_ceil(image.payload_bytes), 1ull << 20);
  image.window_bytes = 2 * image.slot_bytes;
  image.payload = sealed_memfd("immortal-repair-payload", image.window_bytes);
  write_at(image.payload.get(), 0, archive);
  return image;
}

bool rewrite_repair_payload(RepairImage& image, const std::string& profile_dir, const repair::HealthyImage& healthy,
                            const Machine::RamFile& ram, const PayloadKernelPart& part) {
  KernelPartsFromHost parts;
  std::string archive = payload_archive(profile_dir, healthy, ram, part, parts);
  if (!image.payload || archive.size() > image.slot_bytes) return false;
  image.from_host = std::move(parts);
  std::uint64_t old = image.payload_offset, offset = old ? 0 : image.slot_bytes;
  write_at(image.payload.get(), offset, archive);
  // The old payload's pages back to the host. The agents' engines read its healthy copy in place:
  // the caller replaces them at once (a reload request, or new workers), before any crash is served.
  if (::fallocate(image.payload.get(), FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, static_cast<off_t>(old),
                  static_cast<off_t>(image.slot_bytes)) != 0)
    fail_os(ExitCode::failure, "give back the old repair payload's memory", errno);
  image.payload_offset = offset;
  image.payload_bytes = archive.size();
  return true;
}

std::shared_ptr<const repair::HealthyImage> healthy_in_payload(const RepairImage& image) {
  // The mapping lives as long as the image that borrows from it.
  struct Held {
    void* base = MAP_FAILED;
    std::uint64_t size = 0;
    repair::HealthyImage image;
    ~Held() {
      if (base != MAP_FAILED) ::munmap(base, size);
    }
  };
  if (!image.payload || !image.payload_bytes) fail(ExitCode::failure, "the repair image has no payload");
  auto held = std::make_shared<Held>();
  held->size = image.payload_bytes;
  // The slot's offset (0 or slot_bytes, a power of two of at least 1 MiB) is page-aligned.
  held->base = ::mmap(nullptr, held->size, PROT_READ, MAP_SHARED, image.payload.get(), static_cast<off_t>(image.payload_offset));
  if (held->base == MAP_FAILED) fail_os(ExitCode::failure, "map the repair payload", errno);
  auto files = repair::read_payload({static_cast<const char*>(held->base), held->size});
  auto index = files.find("healthy/healthy.json"), blob = files.find("healthy/healthy.bin");
  if (index == files.end() || blob == files.end()) fail(ExitCode::failure, "the repair payload holds no healthy copy");
  held->image = repair::HealthyImage::parse(index->second, blob->second, "the repair payload", repair::HealthyImage::Bytes::borrow);
  repair::digest_pieces(held->image);  // what a crash's precheck compares the guest's code with
  return {held, &held->image};
}

}  // namespace immortal::vmm
