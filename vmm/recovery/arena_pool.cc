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
  if (base) ::munmap(base, reserved);
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

bool ArenaPool::prepare(std::uint64_t bytes, std::uint64_t limit, std::size_t count) {
  bytes = (bytes + MemorySnapshot::kPageSize - 1) & ~(MemorySnapshot::kPageSize - 1);
  limit = (limit + MemorySnapshot::kPageSize - 1) & ~(MemorySnapshot::kPageSize - 1);
  std::string problem;
  bool complete = true;
  for (std::size_t i = 0; i < slots_.size(); ++i) {
    try {
      if (!prepare_slot(*slots_[i], bytes, limit, i < count) && i < count) complete = false;
    } catch (const std::exception& e) {
      problem = e.what();
    }
  }
  if (!problem.empty()) fail(ExitCode::failure, "{}", problem);
  return complete;
}

bool ArenaPool::prepare_slot(Slot& slot, std::uint64_t bytes, std::uint64_t limit, bool grow) {
  std::lock_guard lock(slot.mutex);
  if (slot.in_use) return true;  // one of our snapshots is in it: it is ours, prepared before
  // Another supervisor's snapshot in it may have grown the file for a moment (its pages filled
  // in after a resume; cut back when it lets go): a file's size changes only under its lock, and
  // is read here only under it. Next time, then.
  if (::flock(slot.fd.get(), LOCK_EX | LOCK_NB) != 0) return false;
  struct Unlock {
    int fd;
    ~Unlock() { ::flock(fd, LOCK_UN); }
  } unlock{slot.fd.get()};
  struct stat st {};
  if (::fstat(slot.fd.get(), &st) != 0) fail_os(ExitCode::failure, "stat " + dir_, errno);
  std::uint64_t size = static_cast<std::uint64_t>(st.st_size);
  if (!grow && size < bytes) return true;  // not needed yet, and no one else made it
  if (size < bytes || size > slot.mapped) {
    // Allocates the pages now (tmpfs has no holes after this) or fails with ENOSPC; for a file
    // another supervisor grew, makes sure every page is there before we map it.
    size = std::max(size, bytes);
    if (::fallocate(slot.fd.get(), 0, 0, static_cast<off_t>(size)) != 0)
      fail_os(ExitCode::failure, fmt::format("cannot prepare {} MiB for bundle snapshots in {}", size >> 20, dir_), errno);
  }
  std::uint64_t reserve = std::max(size, limit);
  if (size != slot.mapped || reserve != slot.reserved) {
    // The address space first (nothing allocated: PROT_NONE, no reserve), the file over its start.
    void* room = ::mmap(nullptr, reserve, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (room == MAP_FAILED) fail_os(ExitCode::failure, "reserve address space for the snapshot arena " + dir_, errno);
    void* p = ::mmap(room, size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_FIXED | MAP_POPULATE, slot.fd.get(), 0);
    if (p == MAP_FAILED) {
      int e = errno;
      ::munmap(room, reserve);
      fail_os(ExitCode::failure, "map the snapshot arena " + dir_, e);
    }
    // MAP_POPULATE maps a shared mapping's pages read-only: the copy's first write to each page
    // would still fault, inside the guest's pause. Mapped for writing now, without writing the
    // bytes. Linux 5.14+; older kernels keep the read-only mapping.
    (void)::madvise(p, size, MADV_POPULATE_WRITE);
    if (slot.base) ::munmap(slot.base, slot.reserved);
    slot.base = static_cast<std::byte*>(p);
    slot.mapped = size;
    slot.reserved = reserve;
  }
  // A supervisor that died holding it left a guest's pages behind (we hold the lock: no one else
  // is copying into it).
  clear(slot.base, slot.mapped);
  return true;
}

void ArenaPool::grow(Slot& slot, std::uint64_t bytes) {
  std::lock_guard lock(slot.mutex);
  std::uint64_t from = slot.mapped + slot.grown;
  if (bytes <= from) return;
  if (bytes > slot.reserved) fail(ExitCode::failure, "the snapshot arena cannot grow past {} MiB", slot.reserved >> 20);
  // Allocated now (ENOSPC here, never SIGBUS on a write); we hold the file's lock, so no one else
  // reads its size until let_go() cut it back.
  if (::fallocate(slot.fd.get(), 0, static_cast<off_t>(from), static_cast<off_t>(bytes - from)) != 0)
    fail_os(ExitCode::failure, fmt::format("cannot grow a snapshot arena by {} MiB", (bytes - from) >> 20), errno);
  void* p = ::mmap(slot.base + from, bytes - from, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_FIXED, slot.fd.get(),
                   static_cast<off_t>(from));
  if (p == MAP_FAILED) fail_os(ExitCode::failure, "map the grown snapshot arena", errno);  // let_go() cuts the file back
  slot.grown = bytes - slot.mapped;
}

void ArenaPool::let_go(Slot& slot, std::uint64_t used) {
  std::lock_guard lock(slot.mutex);
  std::memset(slot.base, 0, std::min(used, slot.mapped));
  if (slot.grown) {
    // What we grew into: pages of the file another supervisor mapped (it had grown it past our
    // mapping) are zeroed and kept; the rest is cut off, which gives its memory back.
    std::byte* tail = slot.base + slot.mapped;
    if (slot.file_size > slot.mapped) clear(tail, std::min(slot.grown, slot.file_size - slot.mapped));
    (void)::mmap(tail, slot.grown, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_FIXED, -1, 0);
    slot.grown = 0;
  }
  // Back to the size it had when taken (also after a grow() that failed half-way).
  struct stat st {};
  if (::fstat(slot.fd.get(), &st) == 0 && static_cast<std::uint64_t>(st.st_size) > slot.file_size)
    (void)::ftruncate(slot.fd.get(), static_cast<off_t>(slot.file_size));
  ::flock(slot.fd.get(), LOCK_UN);
  slot.in_use = false;
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
    slot.file_size = static_cast<std::uint64_t>(st.st_size);
    slot.grown = 0;
    return SnapshotArena::borrow(
        slot.base, slot.mapped, slot.reader.get(), [shared](std::uint64_t used) { let_go(*shared, used); },
        slot.reserved - slot.mapped, [shared](std::uint64_t bytes) { grow(*shared, bytes); });
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
