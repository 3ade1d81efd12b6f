#include "recovery/arena_pool.h"

#include "base/error.h"
#include "base/private_dir.h"

#include <fcntl.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cstring>
#include <filesystem>

#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23  // Linux 5.14
#endif

namespace immortal::vmm {

namespace {

std::string arena_name(std::size_t i) { return "arena-" + std::to_string(i); }
std::string record_name(std::size_t i) { return arena_name(i) + ".prepared"; }

struct Flock {
  int fd;
  explicit Flock(int f) : fd(f) { ::flock(fd, LOCK_EX); }
  ~Flock() { ::flock(fd, LOCK_UN); }
};

std::uint64_t file_size(int fd) {
  struct stat st {};
  return ::fstat(fd, &st) == 0 ? static_cast<std::uint64_t>(st.st_size) : 0;
}

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
  // v2: sparse files with a record of their prepared bytes. A supervisor of the version before
  // (during an upgrade) keeps its own pool: it would take a sparse file's size for prepared memory.
  return fmt::format("{}/immortal-arenas-v2-{}-{:016x}", shm, ::geteuid(), h);
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
    slot->record = UniqueFd(::openat(dir_fd_.get(), record_name(i).c_str(), O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600));
    if (!slot->record) fail_os(ExitCode::failure, fmt::format("open {}/{}", dir_, record_name(i)), errno);
    slots_.push_back(std::move(slot));
  }
}

ArenaPool::~ArenaPool() {
  // Snapshots still holding an arena keep their slot (and its mapping) alive through the
  // release hook; the files go only when no supervisor uses the pool any more.
  if (users_ && ::flock(users_.get(), LOCK_EX | LOCK_NB) == 0) {
    for (std::size_t i = 0; i < kArenas; ++i) {
      ::unlinkat(dir_fd_.get(), arena_name(i).c_str(), 0);
      ::unlinkat(dir_fd_.get(), record_name(i).c_str(), 0);
    }
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
  // Prepared: the record's bytes (never more than the file holds: a record left behind by a
  // supervisor that died between allocating and writing it is corrected here).
  std::uint64_t size = std::min(read_prepared(slot), file_size(slot.fd.get()));
  if (!grow && size < bytes) return true;  // not needed yet, and no one else made it
  if (size < bytes || size > slot.mapped) {
    // Allocates the pages now (no holes in [0, size) after this) or fails with ENOSPC; for a file
    // another supervisor prepared further, makes sure every page is there before we map it.
    size = std::max(size, bytes);
    allocate(slot, 0, size, fmt::format("cannot prepare {} MiB for bundle snapshots in {}", size >> 20, dir_));
    write_prepared(slot, size);
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
  // prepares it until let_go() punched it out again.
  allocate(slot, from, bytes, fmt::format("cannot grow a snapshot arena by {} MiB", (bytes - from) >> 20));
  // Populated: this may run in a pause (a copy that outgrew what was prepared), where a fault per
  // page would cost more than the copy.
  void* p = ::mmap(slot.base + from, bytes - from, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_FIXED | MAP_POPULATE, slot.fd.get(),
                   static_cast<off_t>(from));
  if (p == MAP_FAILED) {
    int e = errno;
    if (from >= slot.prepared)  // ours alone: given back now
      (void)::fallocate(slot.fd.get(), FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, static_cast<off_t>(from),
                        static_cast<off_t>(bytes - from));
    fail_os(ExitCode::failure, "map the grown snapshot arena", e);
  }
  slot.grown = bytes - slot.mapped;
}

void ArenaPool::let_go(Slot& slot, std::uint64_t used) {
  std::lock_guard lock(slot.mutex);
  std::memset(slot.base, 0, std::min(used, slot.mapped));
  if (slot.grown) {
    // What we grew into: pages another supervisor prepared (it had prepared past our mapping)
    // are zeroed and kept; the rest is punched out of the file, which gives its memory back. The
    // file keeps its size: a repair VM's window may lie over it.
    std::byte* tail = slot.base + slot.mapped;
    std::uint64_t theirs = slot.prepared > slot.mapped ? std::min(slot.grown, slot.prepared - slot.mapped) : 0;
    clear(tail, theirs);
    if (slot.grown > theirs)
      (void)::fallocate(slot.fd.get(), FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, static_cast<off_t>(slot.mapped + theirs),
                        static_cast<off_t>(slot.grown - theirs));
    (void)::mmap(tail, slot.grown, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_FIXED, -1, 0);
    slot.grown = 0;
  }
  ::flock(slot.fd.get(), LOCK_UN);
  slot.in_use = false;
}

std::uint64_t ArenaPool::keep_prepared(std::size_t count) {
  std::uint64_t given_back = 0;
  for (std::size_t i = count; i < slots_.size(); ++i) {
    Slot& slot = *slots_[i];
    std::lock_guard lock(slot.mutex);
    if (slot.in_use || ::flock(slot.fd.get(), LOCK_EX | LOCK_NB) != 0) continue;  // someone copies into it
    struct Unlock {
      int fd;
      ~Unlock() { ::flock(fd, LOCK_UN); }
    } unlock{slot.fd.get()};
    std::uint64_t prepared = std::min(read_prepared(slot), file_size(slot.fd.get()));
    if (prepared) {
      // The record first: no one maps or takes it as prepared from here on.
      {
        Flock record(slot.record.get());
        write_prepared(slot, 0);
      }
      if (::fallocate(slot.fd.get(), FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 0, static_cast<off_t>(prepared)) == 0)
        given_back += prepared;
    }
    if (slot.base) ::munmap(slot.base, slot.reserved);
    slot.base = nullptr;
    slot.mapped = slot.reserved = 0;
  }
  return given_back;
}

std::shared_ptr<SnapshotArena> ArenaPool::acquire() {
  for (std::size_t i = 0; i < slots_.size(); ++i) {
    auto& shared = slots_[i];
    Slot& slot = *shared;
    std::lock_guard lock(slot.mutex);
    if (slot.in_use || !slot.base) continue;
    if (::flock(slot.fd.get(), LOCK_EX | LOCK_NB) != 0) continue;
    // Files only grow; a shorter one (or less prepared) was changed behind our back: not used
    // (SIGBUS, or pages without memory, otherwise).
    std::uint64_t prepared = read_prepared(slot);
    if (file_size(slot.fd.get()) < slot.mapped || prepared < slot.mapped) {
      ::flock(slot.fd.get(), LOCK_UN);
      continue;
    }
    slot.in_use = true;
    slot.prepared = prepared;
    slot.grown = 0;
    return SnapshotArena::borrow(
        slot.base, slot.mapped, slot.reader.get(), [shared](std::uint64_t used) { let_go(*shared, used); },
        slot.reserved - slot.mapped, [shared](std::uint64_t bytes) { grow(*shared, bytes); }, static_cast<int>(i));
  }
  return nullptr;
}

std::uint64_t ArenaPool::read_prepared(const Slot& slot) {
  std::uint64_t bytes = 0;
  if (::pread(slot.record.get(), &bytes, sizeof bytes, 0) != static_cast<ssize_t>(sizeof bytes)) return 0;
  return bytes;
}

void ArenaPool::write_prepared(const Slot& slot, std::uint64_t bytes) {
  if (::pwrite(slot.record.get(), &bytes, sizeof bytes, 0) != static_cast<ssize_t>(sizeof bytes))
    fail_os(ExitCode::failure, "record a snapshot arena's prepared size", errno);
}

void ArenaPool::allocate(const Slot& slot, std::uint64_t from, std::uint64_t to, const std::string& what) {
  if (to <= from) return;
  Flock lock(slot.record.get());
  if (::fallocate(slot.fd.get(), 0, static_cast<off_t>(from), static_cast<off_t>(to - from)) != 0) fail_os(ExitCode::failure, what, errno);
}

std::vector<ArenaPool::Window> ArenaPool::windows(std::uint64_t bytes) {
  std::uint64_t window = std::bit_ceil(std::max<std::uint64_t>(bytes, MemorySnapshot::kPageSize));
  std::vector<Window> out;
  for (auto& slot : slots_) {
    Flock lock(slot->record.get());
    if (file_size(slot->fd.get()) < window && ::ftruncate(slot->fd.get(), static_cast<off_t>(window)) != 0)
      fail_os(ExitCode::failure, fmt::format("size the snapshot arenas in {} for a repair VM's window", dir_), errno);
    out.push_back({slot->reader.get(), window});
  }
  return out;
}

std::uint64_t ArenaPool::prepared_bytes(std::size_t arena) { return read_prepared(*slots_.at(arena)); }

std::vector<std::uint64_t> ArenaPool::sizes() {
  std::vector<std::uint64_t> out;
  for (auto& slot : slots_) {
    std::lock_guard lock(slot->mutex);
    out.push_back(slot->mapped);
  }
  return out;
}

}  // namespace immortal::vmm
