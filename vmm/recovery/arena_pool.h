// Host memory prepared for bundle snapshots, shared by every instance of one runtime directory
// (docs/operator-guide.md, "Memory prepared for bundles"). A bundle's pause is a copy of the guest's
// kernel pages, fast only into pages allocated ahead; each guest used to keep its own arena
// (its kernel's pages plus a margin, up to three after crashes). Crashes are rare and a copy is
// held about a second, so a host keeps one, and a second once a bundle was taken (for crashes
// in quick succession) until a minute after the last one (keep_prepared), each sized for its
// largest guest.
//
// Each arena is a file in a private directory of /dev/shm (memory, never disk): its pages
// allocated with fallocate (a full tmpfs fails cleanly there, where a first write through a
// mapping would be SIGBUS) and mapped populated by every supervisor. A snapshot holds the file's
// flock while it uses it; releasing it zeroes what it copied, so the next guest's report agent
// (which maps the arena) never sees another guest's memory. The last supervisor to leave
// removes them.
//
// A file is sparse past what is prepared: its size can be a power of two, so that a repair VM
// sees it whole as a PCI window (windows()), while memory is allocated only for the prepared
// bytes (recorded in `arena-N.prepared`, since the size no longer says it) and, for a moment,
// for what a snapshot grows into (punched out again when it lets go). Sizes only grow: a
// shorter file would be SIGBUS for every process that maps it.
#pragma once

#include "base/unique_fd.h"
#include "dump/memory_snapshot.h"

#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

namespace immortal::vmm {

class ArenaPool {
 public:
  static constexpr std::size_t kArenas = 2;
  // The pool directory of a runtime directory: /dev/shm/immortal-arenas-<uid>-<hash of its path>.
  static std::string directory_for(const std::string& runtime_root, const std::string& shm = "/dev/shm");
  // Joins (or creates) the pool in dir. Throws Error when it cannot be made private to us.
  explicit ArenaPool(std::string dir);
  ~ArenaPool();  // the last user removes the arenas
  ArenaPool(const ArenaPool&) = delete;
  ArenaPool& operator=(const ArenaPool&) = delete;

  // Grows the first `count` arenas (those no one is copying into) to at least `bytes`, never
  // shrinking one another guest needs, and maps them populated; later ones are mapped when
  // another supervisor made them large enough. Clears what a supervisor that died mid-bundle
  // left. Throws Error when the memory cannot be had (then snapshots allocate their own).
  // limit: how far a snapshot of ours may grow an arena (SnapshotArena::grow_to) for the pages it
  // fills in after the guest resumed: address space reserved behind each mapping, memory only
  // while that snapshot holds the arena (the file grows, and is cut back when it lets go).
  // Returns false when one of the `count` could not be prepared because another supervisor's
  // snapshot holds it (try again shortly).
  bool prepare(std::uint64_t bytes, std::uint64_t limit, std::size_t count = kArenas);
  // Gives back the memory of the arenas past the first `count` that no one holds (their pages
  // punched out, their records set to nothing prepared): a spare kept after a bundle goes once
  // crashes stopped coming. Another supervisor's mapping of one is then stale and not used
  // (acquire() checks the record) until it prepares the arena again. Returns the bytes given back.
  std::uint64_t keep_prepared(std::size_t count);
  // A free arena, locked for the caller until the last holder lets go; nullptr when every one
  // is in use (by this process or another) or none is prepared.
  std::shared_ptr<SnapshotArena> acquire();
  const std::string& dir() const { return dir_; }
  // The bytes each arena holds as mapped here.
  std::vector<std::uint64_t> sizes();
  // The arenas as a repair VM's read-only PCI windows onto them: each file made at least
  // `bytes` rounded up to a power of two long (holes: no memory), which is each window's size.
  // The descriptors are the pool's read-only ones (the caller reopens them if it keeps them).
  struct Window {
    int fd;
    std::uint64_t bytes;
  };
  std::vector<Window> windows(std::uint64_t bytes);
  // An arena's prepared bytes, as its record says (0 when none: nothing prepared yet).
  std::uint64_t prepared_bytes(std::size_t arena);

 private:
  struct Slot {
    std::mutex mutex;
    UniqueFd fd;      // read-write, close-on-exec; its flock marks "in use" between processes
    UniqueFd reader;  // read-only, for the report agent and the repair VM
    UniqueFd record;  // arena-N.prepared: the prepared bytes (u64); its flock guards the file's size
    std::byte* base = nullptr;
    std::uint64_t mapped = 0;    // the file's bytes mapped here, populated
    std::uint64_t reserved = 0;  // address space from base on: mapped, then room to grow
    bool in_use = false;  // by a snapshot of this process
    // While in use: the file's prepared bytes when it was taken, and how far it was grown past `mapped`.
    std::uint64_t prepared = 0, grown = 0;
    ~Slot();
  };
  bool prepare_slot(Slot& slot, std::uint64_t bytes, std::uint64_t limit, bool grow);  // false: held elsewhere
  static void grow(Slot& slot, std::uint64_t bytes);
  static std::uint64_t read_prepared(const Slot& slot);
  static void write_prepared(const Slot& slot, std::uint64_t bytes);
  // Allocates [from, to) of the file (ENOSPC, never a later SIGBUS), growing its size to `to`
  // at least, under the record's lock: sizes only grow.
  static void allocate(const Slot& slot, std::uint64_t from, std::uint64_t to, const std::string& what);
  static void let_go(Slot& slot, std::uint64_t used);

  std::string dir_;
  UniqueFd dir_fd_;
  UniqueFd users_;  // held shared while we use the pool; the last one out may take it exclusively
  std::vector<std::shared_ptr<Slot>> slots_;
};

}  // namespace immortal::vmm
