#include "recovery/arena_pool.h"

#include "base/error.h"
#include "base/private_dir.h"

#include <fcntl.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <filesystem>

#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23  // Linux 5.14
#endif

namespace immortal::vmm {

namespace {

std::string arena_name(std::size_t i) { return "arena-" + std::to_string(i); }

// Zeroes the pages of [base, base + size) that are not zero already (reading is cheaper than
// writing). size: whole pages, as every arena is.
void clear(std::byte* base, std::uint64_t size) {
  for (std::uint64_t at = 0; at < size; at += MemorySnapshot::kPageSize)
    if (!page_is_zero(base + at)) std::memset(base + at, 0, MemorySnapshot::kPageSize);
}

}  // namespace

std::string ArenaPool::directory_for(const std::string& runtime_root, const std::string& shm) {
  std::error_code ec;
  std::string key = std::filesystem::weakly_canonical(runtime_root, ec).string();
  if (ec || key.empty()) key = std::filesystem::absolute(runtime_root).lexically_normal().string();
  // A directory that does not exist yet keeps its trailing '/' through both: one name either way.
  while (key.size() > 1 && key.back() == '/') key.pop_back();
  std::uint64_t h = 14695981039346656037ull;  // FNV-1a: stable across builds, so an upgrade finds the same pool
  for (unsigned char c : key) h = (h ^ c) * 1099511628211ull;
  return fmt::format("{}/immortal-arenas-{}-{:016x}", shm, ::geteuid(), h);
}

ArenaPool::Slot::~Slot() {
  if (base) ::munmap(base, mapped);
}

ArenaPool::ArenaPool(std::string dir) : dir_(std::move(dir)) {
  ensure_private_directory(dir_, "the snapshot arena pool", true);
  dir_fd_ = UniqueFd(::open(dir_.c_str(), O_DIRECTORY | O_RDONLY | O_CLOEXEC | O_NOFOLLOW));
  if (!dir_fd_) fail_os(ExitCode::failure, "open " + dir_, errno);
  // The last user out removes the arenas while holding `users` exclusively (so this blocks only
  // for that); a `users` it removed between our open and our lock is opened again.
  for (int attempt = 0;; ++attempt) {
    users_ = UniqueFd(::openat(dir_fd_.get(), "users", O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600));
    if (!users_) fail_os(ExitCode::failure, "open " + dir_ + "/users", errno);
    if (::flock(users_.get(), LOCK_SH) != 0) fail_os(ExitCode::failure, "lock " + dir_ + "/users", errno);
    struct stat st {};
    if (::fstat(users_.get(), &st) != 0) fail_os(ExitCode::failure, "stat " + dir_ + "/users", errno);
    if (st.st_nlink > 0) break;
    if (attempt == 10) fail(ExitCode::failure, "{}/users keeps being removed", dir_);
  }
  for (std::size_t i = 0; i < kArenas; ++i) {
    auto slot = std::make_shared<Slot>();
    slot->fd = UniqueFd(::openat(dir_fd_.get(), arena_name(i).c_str(), O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600));
    if (!slot->fd) fail_os(ExitCode::failure, fmt::format("open {}/{}", dir_, arena_name(i)), errno);
    struct stat st {};
    if (::fstat(slot->fd.get(), &st) != 0 || !S_ISREG(st.st_mode) || st.st_uid != ::geteuid())
      fail(ExitCode::failure, "{}/{} is not a regular file of ours", dir_, arena_name(i));
    slot->reader = UniqueFd(::openat(dir_fd_.get(), arena_name(i).c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW));
    if (!slot->reader) fail_os(ExitCode::failure, fmt::format("open {}/{}", dir_, arena_name(i)), errno);
    slots_.push_back(std::move(slot));
  }
}

ArenaPool::~ArenaPool() {
  // Snapshots still holding an arena keep their slot (and its mapping) alive through the
  // release hook; the files go only when no supervisor uses the pool any more.
  if (users_ && ::flock(users_.get(), LOCK_EX | LOCK_NB) == 0) {
    for (std::size_t i = 0; i < kArenas; ++i) ::unlinkat(dir_fd_.get(), arena_name(i).c_str(), 0);
    ::unlinkat(dir_fd_.get(), "users", 0);
    // And the directory, unless someone joined meanwhile (then it is not empty). One joining
    // just between our rmdir and its first file finds no directory: it prepares an arena of
    // its own and says so.
    ::rmdir(dir_.c_str());
    ::flock(users_.get(), LOCK_UN);
  }
}

void ArenaPool::prepare(std::uint64_t bytes, std::size_t count) {
  bytes = (bytes + MemorySnapshot::kPageSize - 1) & ~(MemorySnapshot::kPageSize - 1);
  std::string problem;
  for (std::size_t i = 0; i < slots_.size(); ++i) {
    try {
      prepare_slot(*slots_[i], bytes, i < count);
    } catch (const std::exception& e) {
      problem = e.what();
    }
  }
  if (!problem.empty()) fail(ExitCode::failure, "{}", problem);
}

void ArenaPool::prepare_slot(Slot& slot, std::uint64_t bytes, bool grow) {
  std::lock_guard lock(slot.mutex);
  if (slot.in_use) return;  // one of our snapshots is in it: next time
  // Another supervisor copying into it still lets us size and map it (fallocate only extends a
  // file, and mapping changes nothing); only clearing what a dead holder left needs it idle.
  bool idle = ::flock(slot.fd.get(), LOCK_EX | LOCK_NB) == 0;
  struct Unlock {
    int fd;
    bool held;
    ~Unlock() {
      if (held) ::flock(fd, LOCK_UN);
    }
  } unlock{slot.fd.get(), idle};
  struct stat st {};
  if (::fstat(slot.fd.get(), &st) != 0) fail_os(ExitCode::failure, "stat " + dir_, errno);
  std::uint64_t size = static_cast<std::uint64_t>(st.st_size);
  if (!grow && size < bytes) return;  // not needed yet, and no one else made it
  if (size < bytes || size > slot.mapped) {
    // Allocates the pages now (tmpfs has no holes after this) or fails with ENOSPC; for a file
    // another supervisor grew, makes sure every page is there before we map it.
    size = std::max(size, bytes);
    if (::fallocate(slot.fd.get(), 0, 0, static_cast<off_t>(size)) != 0)
      fail_os(ExitCode::failure, fmt::format("cannot prepare {} MiB for bundle snapshots in {}", size >> 20, dir_), errno);
  }
  if (size != slot.mapped) {
    void* p = ::mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, slot.fd.get(), 0);
    if (p == MAP_FAILED) fail_os(ExitCode::failure, "map the snapshot arena " + dir_, errno);
    // MAP_POPULATE maps a shared mapping's pages read-only: the copy's first write to each page
    // would still fault, inside the guest's pause. Mapped for writing now; the bytes are not
    // touched (another supervisor may be using the arena). Linux 5.14+; older kernels keep the
    // read-only mapping.
    (void)::madvise(p, size, MADV_POPULATE_WRITE);
    if (slot.base) ::munmap(slot.base, slot.mapped);
    slot.base = static_cast<std::byte*>(p);
    slot.mapped = size;
  }
  // A supervisor that died holding it left a guest's pages behind.
  if (idle) clear(slot.base, slot.mapped);
}

std::shared_ptr<SnapshotArena> ArenaPool::acquire() {
  for (auto& shared : slots_) {
    Slot& slot = *shared;
    std::lock_guard lock(slot.mutex);
    if (slot.in_use || !slot.base) continue;
    if (::flock(slot.fd.get(), LOCK_EX | LOCK_NB) != 0) continue;
    struct stat st {};
    // Files only grow; a shorter one was changed behind our back: not used (SIGBUS otherwise).
    if (::fstat(slot.fd.get(), &st) != 0 || static_cast<std::uint64_t>(st.st_size) < slot.mapped) {
      ::flock(slot.fd.get(), LOCK_UN);
      continue;
    }
    slot.in_use = true;
    return SnapshotArena::borrow(slot.base, slot.mapped, slot.reader.get(), [shared](std::uint64_t used) {
      std::lock_guard inner(shared->mutex);
      std::memset(shared->base, 0, std::min(used, shared->mapped));
      ::flock(shared->fd.get(), LOCK_UN);
      shared->in_use = false;
    });
  }
  return nullptr;
}

std::vector<std::uint64_t> ArenaPool::sizes() {
  std::vector<std::uint64_t> out;
  for (auto& slot : slots_) {
    std::lock_guard lock(slot->mutex);
    out.push_back(slot->mapped);
  }
  return out;
}

}  // namespace immortal::vmm
