// A private copy of a stopped guest's memory, taken in the short pause a bundle needs: after
// it the guest runs again while the copy is written out. Guest RAM is a shared mapping, so a
// forked writer would see every later guest write (MAP_SHARED is not copy-on-write) — copying
// is the consistent way, and copying only what a crash dump needs (dump/page_classes.h) keeps
// the pause bounded by the kernel's footprint, not by the guest's RAM size.
//
// The snapshot is itself PhysicalMemory, so the kernel readers (tasks, log, backtraces) run on
// it unchanged. Zero pages read as zeros; free, user and page-cache pages were not copied and
// reading them throws MemoryFault.
#pragma once

#include "base/unique_fd.h"
#include "dump/page_classes.h"
#include "memory/physical_memory.h"

#include <array>
#include <functional>
#include <memory>
#include <string>
#include <vector>

namespace immortal {

struct SnapshotCensus {
  std::array<std::uint64_t, kPageClassCount> pages{};  // by PageClass
  std::uint64_t total_pages = 0;
  std::uint64_t copied_bytes = 0;
  std::uint64_t known_pages = 0;  // of the copied pages, taken from a copy known to equal them (KnownPages)
  std::uint64_t after_resume_pages = 0;  // of the copied pages, read from guest RAM after it resumed
  // Of the pages left for after the resume, those that could not be taken (no memory for them
  // then): left out, as kernel pages not copied. The reason in `lost_why`.
  std::uint64_t lost_pages = 0;
  std::string lost_why;
  bool warm_arena = false;  // copied into memory prepared ahead
  std::uint64_t pause_candidates = 0;  // pages that could have been copied in the pause (kernel class, not left for later)
  // The slots the pause's copy reached (its pages that were not all zeros, and on two threads the
  // slots the first part's zero pages left free before the second's): what the arena had to hold.
  std::uint64_t pause_slots = 0;
  // Bytes the arena grew by during the pause, when what was copied did not fit what was prepared
  // (allocated then: a longer pause).
  std::uint64_t grown_in_pause_bytes = 0;
  std::string filter;  // how pages were chosen ("struct page (dump level 31)" or why all were kept)
};

// Host memory for snapshots, allocated and touched ahead of a crash: the first write to a fresh
// page costs a fault (several µs here, under nested virtualisation), which for tens of MiB
// would dominate the pause; a warm arena is copied into at memory speed. Reused once a
// snapshot that used it is gone.
class SnapshotArena {
 public:
  static std::shared_ptr<SnapshotArena> make(std::uint64_t bytes);  // throws Error
  // Memory prepared and mapped by someone else (the host's arena pool): reader_fd is what a
  // reading process maps (not owned); release runs when the last holder lets go, with how many
  // bytes from the start a snapshot wrote (to clear them before another guest's snapshot).
  //
  // room and grow: address space reserved right after the arena, which grow(bytes) turns into
  // memory, at that moment, so that the arena holds `bytes` (throws Error when the memory cannot
  // be had). For the pages a snapshot fills in after the guest resumed (KnownPages): they need
  // no memory prepared ahead, only their slots.
  static std::shared_ptr<SnapshotArena> borrow(std::byte* base, std::uint64_t size, int reader_fd,
                                               std::function<void(std::uint64_t used)> release, std::uint64_t room = 0,
                                               std::function<void(std::uint64_t bytes)> grow = {}, int pool_slot = -1);
  ~SnapshotArena();
  SnapshotArena(const SnapshotArena&) = delete;
  SnapshotArena& operator=(const SnapshotArena&) = delete;
  std::byte* data() const { return base_; }
  std::uint64_t size() const { return size_; }  // usable now
  std::uint64_t room() const { return room_; }  // beyond size(), what grow_to() may add
  // Makes [size(), bytes) usable (nothing when it is already). Throws Error (the arena unchanged)
  // when it cannot: beyond room(), or no memory to be had.
  void grow_to(std::uint64_t bytes);
  // The memfd behind it (sealed against resizing), for a process that reads the copy; -1 for
  // pages another process mapped and handed to MemorySnapshot::adopt (which are not unmapped here).
  int fd() const { return fd_ ? fd_.get() : reader_fd_; }
  // Which of the host pool's arenas this is (a repair VM sees each as a window), -1 for none.
  int pool_slot() const { return pool_slot_; }

 private:
  friend class MemorySnapshot;
  SnapshotArena() = default;
  static std::shared_ptr<SnapshotArena> map_fresh(std::uint64_t bytes);
  std::byte* base_ = nullptr;
  std::uint64_t size_ = 0;
  UniqueFd fd_;
  int reader_fd_ = -1;
  std::uint64_t used_ = 0;  // bytes a snapshot copied in (of those usable when it started)
  std::uint64_t room_ = 0;
  std::function<void(std::uint64_t)> release_;
  std::function<void(std::uint64_t)> grow_;
  int pool_slot_ = -1;
};


// Is this page (kPageSize bytes, at any alignment) all zeros?
bool page_is_zero(const std::byte* page);

// Guest RAM in whole pages (each range's start rounded down, its end up), each range with the
// class of each of its pages.
using RamClasses = std::vector<std::pair<PhysicalRange, std::vector<PageClass>>>;
// ram's ranges so, every page `kernel` (copied unless it is all zeros).
RamClasses unclassified_ram(const PhysicalMemory& ram);
// Of classes, the pages a snapshot would copy (all `kernel` ones), each read once so that it is
// mapped into our view of guest RAM now rather than during a pause; how many of them hold
// something (are not all zeros now); and how many slots a snapshot taken now would reach in its
// pause, `later` (sorted guest-physical addresses) left for after it: the pages that hold
// something, and on `threads` = 2 (as MemorySnapshot::take splits its copy) the first part's zero
// pages too, since the second part's slots start after all of the first part's.
struct KernelPageCount {
  std::uint64_t pages = 0, non_zero = 0, pause_slots = 0;
};
KernelPageCount touch_kernel_pages(const PhysicalMemory& ram, const RamClasses& classes,
                                   const std::vector<std::uint64_t>& later = {}, unsigned threads = 1);
// How many of `pages` (sorted guest-physical page addresses) classes call kernel pages.
std::uint64_t kernel_pages_among(const RamClasses& classes, const std::vector<std::uint64_t>& pages);

// Pages a snapshot may take from elsewhere than guest RAM: bytes known to equal the guest's at
// this moment (the kernel's code, which the repair path compares with its healthy copy beside the
// snapshot). They are copied last; known() is asked once every other page is copied, and says for
// each page whether equal bytes are known (no: copy it from guest RAM) and whether they are all
// zeros (then the page is left out, as a zero page of RAM is). copy(i, page) writes the i-th
// page's known bytes in MemorySnapshot::fill_known(), after the guest runs again: what it reads
// must live until then.
//
// after_resume: the pages are known nowhere else and are read from guest RAM by fill_known(ram)
// right after the guest resumes (an on-demand bundle's kernel code, docs/bundle-format.md); known
// is not asked, and each such page of the kernel class is kept, zeros or not.
struct KnownPages {
  enum class Known : std::uint8_t { no, zeros, bytes };
  std::vector<std::uint64_t> pages;  // sorted guest-physical page addresses
  std::function<std::vector<Known>()> known;
  std::function<void(std::size_t index, std::byte* page)> copy;
  bool after_resume = false;
};

class MemorySnapshot final : public PhysicalMemory {
 public:
  static constexpr std::uint64_t kPageSize = 4096;
  // Copies ram (the guest must be stopped). With filter and a kernel whose struct pages can be
  // read, only kernel pages are copied; otherwise all non-zero pages. The copy goes into arena
  // when it is large enough, else into freshly allocated memory.
  static std::unique_ptr<MemorySnapshot> take(const PhysicalMemory& ram, const Kernel* kernel, bool filter,
                                              std::shared_ptr<SnapshotArena> arena = nullptr);
  // The same with the pages' classes made elsewhere (the page-class agent), and how (`filter`
  // in the census). Classes that do not cover ram's ranges page for page are not used: then
  // every non-zero page is copied, and the census says why.
  // `keep`: sorted guest-physical page addresses copied even when all zeros (which are otherwise
  // left out, and cannot be written in the copy: the printk ring's next record, log_append_pages).
  // `prepared`: an index made by prepare() for ram, filled in rather than allocated (else, or
  // when it was made for other ranges, a new one is).
  // `later`: pages that may be known elsewhere (KnownPages); until fill_known() their contents
  // cannot be read from the snapshot.
  // `threads`: 2 lets a copy of kTwoThreadPages or more go on two threads (when the host has two
  // cores), for a pause that is nothing but the copy; 1 for a copy beside other urgent work.
  static std::unique_ptr<MemorySnapshot> take(const PhysicalMemory& ram, const RamClasses& classes, std::string filter,
                                              std::shared_ptr<SnapshotArena> arena = nullptr,
                                              const std::vector<std::uint64_t>& keep = {},
                                              std::unique_ptr<MemorySnapshot> prepared = nullptr,
                                              const KnownPages* later = nullptr, unsigned threads = 2);
  // Copies in the pages take() found known elsewhere (the guest may run by now: they come from
  // the bytes known() named), and reads those left for after the resume from ram (which must be
  // given when there are any: Error otherwise). Returns how many; later calls do nothing.
  std::uint64_t fill_known(const PhysicalMemory* ram = nullptr);
  bool has_unfilled() const { return !unfilled_.empty(); }
  // An empty snapshot of ram whose page index (4 bytes a page) is allocated and written now, for
  // take() to fill: a fresh page costs a fault (about 15 µs here, under nested virtualisation),
  // and the 512 pages of a 2 GiB guest's index were a third of a bundle's pause.
  static std::unique_ptr<MemorySnapshot> prepare(const PhysicalMemory& ram);
  // The same copy in another process (the report agent): the page index (index()) and the copied
  // pages, mapped there from pages_fd(). Every slot is checked against the pages given; a
  // malformed index is Error(bad_input). Writes change `pages` only (map them privately).
  // `pages` stay the caller's: they must outlive the snapshot, which does not unmap them.
  // Without `census`, the slots are not counted by class (census() says nothing of them) nor
  // checked here: one that names no page given reads as not guest RAM (the repair VM's analysis,
  // for which the count over every page of guest RAM took milliseconds under TCG); and they are
  // read where `index` has them (when aligned), which must then outlive the snapshot too.
  static std::unique_ptr<MemorySnapshot> adopt(std::string_view index, std::byte* pages, std::uint64_t page_bytes,
                                               bool census = true);
  ~MemorySnapshot() override;
  MemorySnapshot(const MemorySnapshot&) = delete;
  MemorySnapshot& operator=(const MemorySnapshot&) = delete;

  const std::vector<PhysicalRange>& ranges() const override { return ranges_; }
  void read(std::uint64_t address, std::span<std::byte> out) const override;
  // The copy is ours: a bundle may record an adjustment (e.g. panic_cpu). Only copied pages.
  bool writable() const override { return true; }
  void write(std::uint64_t address, std::span<const std::byte> data) override;

  PageClass page_class(std::uint64_t paddr) const;
  // Host pointer to a copied page (nullptr for zero and excluded pages).
  const std::byte* page_data(std::uint64_t paddr) const;
  const SnapshotCensus& census() const { return census_; }
  // What adopt() needs: the ranges and each page's slot, as bytes (docs/protocol.md, "Report agent").
  std::string index() const;
  int pages_fd() const { return arena_ ? arena_->fd() : -1; }
  // The host pool's arena the copied pages lie in, from its start (-1: none of the pool's).
  int pool_slot() const { return arena_ ? arena_->pool_slot() : -1; }
  // The bytes of pages_fd() the index's slots lie in (the copied pages, and any unused slots between).
  std::uint64_t pages_bytes() const { return static_cast<std::uint64_t>(slots_) * kPageSize; }

  // A copy of at least this many pages goes on two threads (take()).
  static constexpr std::uint64_t kTwoThreadPages = 4096;

 private:
  MemorySnapshot() = default;
  struct Range {
    PhysicalRange range;
    std::vector<std::uint32_t> slot;  // per page: index into buffer_, or kExcluded + class
    const std::uint32_t* borrowed = nullptr;  // instead of slot: the adopted index's, in place
  };
  static constexpr std::uint32_t kExcluded = 0xfffffff0u;
  const Range* range_of(std::uint64_t paddr) const;
  Range* range_of(std::uint64_t paddr);
  // A page left for later whose slot could not be had: left out, as a kernel page not copied.
  void lose(Range& range, std::size_t page);
  std::uint32_t slot_of(std::uint64_t paddr) const;

  std::vector<PhysicalRange> ranges_;
  std::vector<Range> by_range_;
  static constexpr std::size_t kFromRam = ~std::size_t{0};
  struct Unfilled {
    std::uint32_t slot;
    std::size_t known;  // its index in KnownPages (copy_known_ writes it); kFromRam: read from guest RAM
    std::uint64_t paddr;
  };
  std::vector<Unfilled> unfilled_;  // in slot order
  std::function<void(std::size_t, std::byte*)> copy_known_;  // KnownPages::copy, for fill_known()
  bool unfilled_slot(std::uint32_t slot) const;
  std::shared_ptr<SnapshotArena> arena_;  // holds the copied pages
  std::byte* buffer_ = nullptr;
  std::uint32_t slots_ = 0;  // slots handed out: copied pages, and unused ones between two threads' parts
  SnapshotCensus census_;
};

}  // namespace immortal
