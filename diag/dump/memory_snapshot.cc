#include "dump/memory_snapshot.h"

#include "base/budgets.h"
#include "base/error.h"
#include "base/sealed_memfd.h"

#include <sys/mman.h>

#include <algorithm>
#include <cstring>
#include <optional>
#include <thread>
#include <utility>

namespace immortal {

bool page_is_zero(const std::byte* page) {
  // Word compares (memcpy: the page may lie at any alignment, the healthy copy's do); most
  // non-zero pages differ in their first words.
  for (std::size_t i = 0; i < MemorySnapshot::kPageSize; i += 8) {
    std::uint64_t w;
    std::memcpy(&w, page + i, 8);
    if (w) return false;
  }
  return true;
}

namespace {

std::optional<PageClassifier> classifier_for(const Kernel* kernel, bool filter, std::string* description) {
  std::string why;
  std::optional<PageClassifier> c;
  if (filter && kernel) c = PageClassifier::from_kernel(*kernel, &why);
  if (description)
    *description = c         ? "struct page: free, user and page-cache pages left out (makedumpfile dump level 31)"
                   : !filter ? "none: every non-zero page copied"
                   : !kernel ? "none (no kernel to read struct pages from): every non-zero page copied"
                             : "none (" + why + "): every non-zero page copied";
  return c;
}

// A range of guest RAM in whole pages: its start rounded down, its end up.
PhysicalRange in_whole_pages(const PhysicalRange& r) {
  constexpr std::uint64_t kPage = MemorySnapshot::kPageSize;
  std::uint64_t start = r.start & ~(kPage - 1);
  return {start, ((r.end() + kPage - 1) & ~(kPage - 1)) - start};
}

// Guest RAM in whole pages, each range with its pages' classes (all `kernel` without a classifier).
RamClasses classify_ram(const PhysicalMemory& ram, const std::optional<PageClassifier>& classifier) {
  RamClasses out = unclassified_ram(ram);
  if (classifier)
    for (auto& [pr, c] : out) classifier->classify(pr.start / MemorySnapshot::kPageSize, c);
  return out;
}

}  // namespace

RamClasses unclassified_ram(const PhysicalMemory& ram) {
  RamClasses out;
  for (const auto& r : ram.ranges()) {
    PhysicalRange pr = in_whole_pages(r);
    out.emplace_back(pr, std::vector<PageClass>(pr.size / MemorySnapshot::kPageSize, PageClass::kernel));
  }
  return out;
}

std::uint64_t kernel_pages_among(const RamClasses& classes, const std::vector<std::uint64_t>& pages) {
  std::uint64_t n = 0;
  std::size_t ri = 0;
  for (std::uint64_t paddr : pages) {
    while (ri < classes.size() && paddr >= classes[ri].first.start + classes[ri].first.size) ++ri;
    if (ri == classes.size()) break;
    const auto& [range, c] = classes[ri];
    if (paddr < range.start) continue;
    std::uint64_t p = (paddr - range.start) / MemorySnapshot::kPageSize;
    if (p < c.size() && c[p] == PageClass::kernel) ++n;
  }
  return n;
}

// Shared memory rather than anonymous: the report agent maps the same pages (read-only for it).
std::shared_ptr<SnapshotArena> SnapshotArena::map_fresh(std::uint64_t bytes) {
  std::shared_ptr<SnapshotArena> a(new SnapshotArena);
  a->size_ = std::max<std::uint64_t>((bytes + MemorySnapshot::kPageSize - 1) & ~(MemorySnapshot::kPageSize - 1),
                                     MemorySnapshot::kPageSize);
  a->fd_ = sealed_memfd("immortal-snapshot", a->size_);
  void* p = ::mmap(nullptr, a->size_, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_NORESERVE, a->fd_.get(), 0);
  if (p == MAP_FAILED) fail_os(ExitCode::failure, "cannot allocate memory for snapshots", errno);
  a->base_ = static_cast<std::byte*>(p);
  return a;
}

std::shared_ptr<SnapshotArena> SnapshotArena::make(std::uint64_t bytes) {
  auto a = map_fresh(bytes);
  // Touch every page now, so a snapshot does not pay for it.
  for (std::uint64_t at = 0; at < a->size_; at += MemorySnapshot::kPageSize) a->base_[at] = std::byte{1};
  return a;
}

std::shared_ptr<SnapshotArena> SnapshotArena::borrow(std::byte* base, std::uint64_t size, int reader_fd,
                                                     std::function<void(std::uint64_t used)> release, std::uint64_t room,
                                                     std::function<void(std::uint64_t bytes)> grow, int pool_slot) {
  std::shared_ptr<SnapshotArena> a(new SnapshotArena);
  a->pool_slot_ = pool_slot;
  a->base_ = base;
  a->size_ = size;
  a->reader_fd_ = reader_fd;
  a->release_ = std::move(release);
  a->room_ = grow ? room : 0;
  a->grow_ = std::move(grow);
  return a;
}

void SnapshotArena::grow_to(std::uint64_t bytes) {
  bytes = (bytes + MemorySnapshot::kPageSize - 1) & ~(MemorySnapshot::kPageSize - 1);
  if (bytes <= size_) return;
  if (bytes - size_ > room_)
    fail(ExitCode::failure, "a snapshot needs {} MiB, {} MiB more than its arena can grow", bytes >> 20, (bytes - size_ - room_) >> 20);
  grow_(bytes);
  room_ -= bytes - size_;
  size_ = bytes;
}

SnapshotArena::~SnapshotArena() {
  if (release_) release_(used_);
  else if (base_) ::munmap(base_, size_);
}

std::unique_ptr<MemorySnapshot> MemorySnapshot::take(const PhysicalMemory& ram, const Kernel* kernel, bool filter,
                                                     std::shared_ptr<SnapshotArena> arena) {
  std::string filter_description;
  auto classified = classify_ram(ram, classifier_for(kernel, filter, &filter_description));
  return take(ram, classified, std::move(filter_description), std::move(arena));
}

namespace {

// Do classes cover ram's ranges in whole pages (as unclassified_ram makes them), page for page?
bool classes_fit(const PhysicalMemory& ram, const RamClasses& classes) {
  const auto& ranges = ram.ranges();
  if (classes.size() != ranges.size()) return false;
  for (std::size_t i = 0; i < ranges.size(); ++i) {
    PhysicalRange whole = in_whole_pages(ranges[i]);
    const auto& [pr, c] = classes[i];
    if (pr.start != whole.start || pr.size != whole.size || c.size() != whole.size / MemorySnapshot::kPageSize) return false;
  }
  return true;
}

// Where a copy splits into two equal parts: the first page of the second part (range,
// page), and how many slots the first may use (its pages of the kernel class, less those copied
// later). range == classes.size(): no split.
struct SplitPoint {
  std::size_t range = 0, page = 0;
  std::uint32_t slots_before = 0;
};

SplitPoint split_point(const RamClasses& classes, const std::vector<std::uint64_t>& later, std::uint64_t candidates) {
  constexpr std::uint64_t kPage = MemorySnapshot::kPageSize;
  std::uint64_t half = candidates / 2, before = 0;
  SplitPoint at{classes.size(), 0, 0};
  for (std::size_t ri = 0; ri < classes.size() && at.range == classes.size(); ++ri) {
    const auto& c = classes[ri].second;
    auto here = static_cast<std::uint64_t>(std::count(c.begin(), c.end(), PageClass::kernel));
    if (before + here <= half) {
      before += here;
      continue;
    }
    for (std::size_t p = 0; p < c.size(); ++p) {
      if (c[p] == PageClass::kernel && before++ == half) {
        at = {ri, p, 0};
        --before;
        break;
      }
    }
  }
  if (at.range == classes.size()) return at;
  // The later pages of the kernel class before the split are copied after both parts.
  std::uint64_t split_paddr = classes[at.range].first.start + at.page * kPage;
  for (std::uint64_t paddr : later) {
    if (paddr >= split_paddr) break;
    for (const auto& [r, c] : classes)
      if (r.contains(paddr, 1) && c[(paddr - r.start) / kPage] == PageClass::kernel) --before;
  }
  at.slots_before = static_cast<std::uint32_t>(before);
  return at;
}

bool copies_on_two_threads(unsigned threads, std::uint64_t candidates, bool has_ranges) {
  return threads >= 2 && has_ranges && candidates >= MemorySnapshot::kTwoThreadPages && std::thread::hardware_concurrency() >= 2;
}

}  // namespace

KernelPageCount touch_kernel_pages(const PhysicalMemory& ram, const RamClasses& classes, const std::vector<std::uint64_t>& later,
                                   unsigned threads) {
  KernelPageCount count;
  for (const auto& [r, c] : classes) count.pages += static_cast<std::uint64_t>(std::count(c.begin(), c.end(), PageClass::kernel));
  // Where take() would split its copy, and how many slots its first part would keep.
  SplitPoint at{classes.size(), 0, 0};
  if (copies_on_two_threads(threads, count.pages, !classes.empty())) at = split_point(classes, later, count.pages);
  const bool split = at.range < classes.size();
  std::uint64_t written = 0, second_part_written = 0;  // not all zeros, and not left for after the pause
  std::array<std::byte, MemorySnapshot::kPageSize> page;
  std::size_t k = 0;
  for (std::size_t ri = 0; ri < classes.size(); ++ri) {
    const auto& [r, c] = classes[ri];
    for (std::size_t p = 0; p < c.size(); ++p) {
      if (c[p] != PageClass::kernel) continue;
      const std::uint64_t paddr = r.start + p * MemorySnapshot::kPageSize;
      bool zeros = false;
      try {
        // Most written pages differ from zeros in their first bytes: the whole page is read only
        // when those are zeros (a large guest's kernel pages are GiBs; this runs at each profile).
        std::span<std::byte> head(page.data(), 64);
        ram.read(paddr, head);
        zeros = std::all_of(head.begin(), head.end(), [](std::byte b) { return b == std::byte{0}; });
        if (zeros) {
          ram.read(paddr, page);
          zeros = page_is_zero(page.data());
        }
      } catch (const MemoryFault&) {
        zeros = false;  // a partial page: counted as copied
      }
      if (zeros) continue;
      ++count.non_zero;
      while (k < later.size() && later[k] < paddr) ++k;
      if (k < later.size() && later[k] == paddr) continue;  // copied after the pause
      ++written;
      if (split && (ri > at.range || (ri == at.range && p >= at.page))) ++second_part_written;
    }
  }
  count.pause_slots = split ? at.slots_before + second_part_written : written;
  return count;
}

std::unique_ptr<MemorySnapshot> MemorySnapshot::prepare(const PhysicalMemory& ram) {
  std::unique_ptr<MemorySnapshot> s(new MemorySnapshot);
  for (const auto& [pr, c] : unclassified_ram(ram)) {
    s->ranges_.push_back(pr);
    s->by_range_.push_back({pr, std::vector<std::uint32_t>(c.size(), kExcluded)});  // written: mapped now
  }
  return s;
}

std::unique_ptr<MemorySnapshot> MemorySnapshot::take(const PhysicalMemory& ram, const RamClasses& classes, std::string filter,
                                                     std::shared_ptr<SnapshotArena> arena, const std::vector<std::uint64_t>& keep,
                                                     std::unique_ptr<MemorySnapshot> prepared, const KnownPages* later,
                                                     unsigned threads) {
  // Classes of other ranges than ram's (made for another layout) are not trusted for this one.
  std::optional<RamClasses> unclassified;
  if (!classes_fit(ram, classes)) {
    unclassified = unclassified_ram(ram);
    filter = "none (the page classes did not match guest RAM's ranges): every non-zero page copied";
  }
  const RamClasses& classified = unclassified ? *unclassified : classes;
  // The index: the prepared one when it was made for these ranges, else a new one.
  bool reuse = prepared && prepared->by_range_.size() == classified.size() && !prepared->arena_;
  for (std::size_t i = 0; reuse && i < classified.size(); ++i)
    reuse = prepared->by_range_[i].range.start == classified[i].first.start &&
            prepared->by_range_[i].slot.size() == classified[i].second.size();
  std::unique_ptr<MemorySnapshot> s = reuse ? std::move(prepared) : std::unique_ptr<MemorySnapshot>(new MemorySnapshot);
  s->census_ = SnapshotCensus{};
  s->census_.filter = std::move(filter);
  std::uint64_t candidates = 0;
  for (std::size_t i = 0; i < classified.size(); ++i) {
    const auto& [pr, c] = classified[i];
    candidates += static_cast<std::uint64_t>(std::count(c.begin(), c.end(), PageClass::kernel));
    if (!reuse) {
      s->ranges_.push_back(pr);
      s->by_range_.push_back({pr, std::vector<std::uint32_t>(c.size())});
    }
  }
  if (candidates >= kExcluded) fail(ExitCode::failure, "guest memory too large to snapshot ({} pages)", candidates);
  // The pages copied in the pause must fit in the arena as it is; the later ones (filled in after
  // the resume) may go where it can still grow.
  std::uint64_t pause_pages = candidates - (later ? kernel_pages_among(classified, later->pages) : 0);
  s->census_.pause_candidates = pause_pages;
  // An arena is sized for the pages that are not all zeros (BundleRecorder::prepare), fewer than
  // the candidates: one that can grow to hold them all is used, and grows in the pause (memory
  // allocated then: slower) only for what did not fit.
  if (arena && arena->size() + arena->room() >= candidates * kPageSize) {
    s->census_.warm_arena = true;
  } else {
    arena = SnapshotArena::map_fresh(candidates * kPageSize);
  }
  s->arena_ = std::move(arena);
  s->buffer_ = s->arena_->data();
  // What may be written, for the arena's owner to clear after us (even if the copy fails midway).
  s->arena_->used_ = std::min(candidates * kPageSize, s->arena_->size());

  struct LaterPage {
    std::size_t range, page, index;  // where it is in RAM, and in KnownPages::pages
  };
  // One part of the copy: the pages from (range, page) up to the next part's start, copied into
  // slots from `base` on.
  struct Part {
    std::size_t range = 0, page = 0;  // where it starts in RAM
    std::uint32_t base = 0, next = 0;  // its first slot and its next one
    bool grows = false;  // the last part: it may grow the arena for what does not fit (the first stops before the second's base)
    std::array<std::uint64_t, kPageClassCount> pages{};  // its census, merged after
    std::vector<LaterPage> later;  // the later pages in it, left for the end
  };
  // One page of a kernel class: copied into the part's next slot, or found all zeros (and not kept).
  using Known = KnownPages::Known;
  // known: the page's index in KnownPages and what is known of it (Known::no: read it from RAM now).
  auto copy_page = [&](Part& part, Range& range, std::size_t p, PageClass cls, Known known, std::size_t index) {
    std::uint64_t paddr = range.range.start + p * kPageSize;
    if (cls == PageClass::kernel && known == Known::no && part.grows &&
        (static_cast<std::uint64_t>(part.next) + 1) * kPageSize > s->arena_->size()) {
      // More pages hold something than the arena was prepared for: it grows now, by an eighth
      // (at least 8 MiB), within what it may; a page that memory cannot be had for is lost.
      // (Slots of pages filled in after the resume grow it then: fill_known.)
      std::uint64_t size = s->arena_->size();
      std::uint64_t want = std::min(size + std::max<std::uint64_t>(size / 8, 8ull << 20), size + s->arena_->room());
      try {
        s->arena_->grow_to(want);
        s->census_.grown_in_pause_bytes += s->arena_->size() - size;
      } catch (const std::exception& e) {
        s->census_.lost_why = e.what();
        s->lose(range, p);
        ++part.pages[static_cast<std::size_t>(PageClass::kernel)];
        return;
      }
    }
    if (cls == PageClass::kernel) {
      std::byte* dst = s->buffer_ + static_cast<std::uint64_t>(part.next) * kPageSize;
      const std::byte* bytes = dst;
      bool zeros = false;
      if (known != Known::no) {
        zeros = known == Known::zeros;  // its bytes are copied in by fill_known(), after the guest runs again
      } else {
        try {
          ram.read(paddr, std::span(dst, kPageSize));
        } catch (const MemoryFault&) {
          std::memset(dst, 0, kPageSize);  // a partial page at a range edge
        }
      }
      if ((known == Known::no ? page_is_zero(bytes) : zeros) && !std::binary_search(keep.begin(), keep.end(), paddr)) {
        cls = PageClass::zero;
      } else {
        if (known != Known::no) s->unfilled_.push_back({part.next, index, paddr});
        range.slot[p] = part.next++;
      }
    }
    if (cls != PageClass::kernel) range.slot[p] = kExcluded + static_cast<std::uint32_t>(cls);
    ++part.pages[static_cast<std::size_t>(cls)];
  };
  const std::vector<std::uint64_t> none;
  const std::vector<std::uint64_t>& deferred = later ? later->pages : none;
  // Every page of a part but the later ones, in address order.
  auto copy_part = [&](Part& part, const Part* until) {
    std::uint64_t from = s->by_range_[part.range].range.start + part.page * kPageSize;
    auto k = static_cast<std::size_t>(std::lower_bound(deferred.begin(), deferred.end(), from) - deferred.begin());
    for (std::size_t ri = part.range; ri < s->by_range_.size() && (!until || ri <= until->range); ++ri) {
      auto& range = s->by_range_[ri];
      const auto& c = classified[ri].second;
      std::size_t end = until && ri == until->range ? until->page : c.size();
      for (std::size_t p = ri == part.range ? part.page : 0; p < end; ++p) {
        std::uint64_t paddr = range.range.start + p * kPageSize;
        while (k < deferred.size() && deferred[k] < paddr) ++k;
        if (k < deferred.size() && deferred[k] == paddr) {
          part.later.push_back({ri, p, k});
          continue;
        }
        copy_page(part, range, p, c[p], Known::no, 0);
      }
    }
  };
  // A large copy goes in two parts on two threads: the guest's cores are idle while it is stopped,
  // and one core alone does not reach this host's memory bandwidth (105 MiB took 6.8 ms on one
  // thread, 3.7 ms on two). The second part's slots start after as many as the first could use,
  // so the first one's zero pages leave unused slots between them.
  Part first, second;
  bool two = copies_on_two_threads(threads, candidates, !s->by_range_.empty());
  if (two) {
    SplitPoint at = split_point(classified, deferred, candidates);
    second.range = at.range;
    second.page = at.page;
    second.base = second.next = at.slots_before;
    two = at.range < s->by_range_.size();
    // The first part's slots must all be there before it starts (only the second one grows the
    // arena); an arena smaller than that is copied into by one thread.
    if (two && static_cast<std::uint64_t>(at.slots_before) * kPageSize > s->arena_->size()) two = false;
  }
  (two ? second : first).grows = true;
  std::exception_ptr second_failed;
  std::thread helper;
  if (two) {
    helper = std::thread([&] {
      try {
        copy_part(second, nullptr);
      } catch (...) {
        second_failed = std::current_exception();
      }
    });
  }
  try {
    if (!s->by_range_.empty()) copy_part(first, two ? &second : nullptr);
  } catch (...) {
    if (helper.joinable()) helper.join();
    throw;
  }
  if (helper.joinable()) helper.join();
  if (second_failed) std::rethrow_exception(second_failed);
  // Then the later pages, from where they are known, after both parts' slots.
  Part& tail = two ? second : first;
  s->census_.pause_slots = tail.next;  // and the later pages copied now, below
  std::vector<LaterPage> deferred_at = std::move(first.later);
  deferred_at.insert(deferred_at.end(), second.later.begin(), second.later.end());
  if (!deferred_at.empty()) {
    std::vector<Known> known = later->known && !later->after_resume ? later->known() : std::vector<Known>{};
    if (!later->copy) known.clear();  // nothing could write them
    else s->copy_known_ = later->copy;
    auto known_of = [&](const LaterPage& l) { return known.size() == deferred.size() ? known[l.index] : Known::no; };
    // Read from RAM now (the copy does not know them): first, into memory the arena has, so that
    // the slots filled in after the resume come last, where the arena may grow (grow_to) then.
    auto copied_now = [&](const LaterPage& l) {
      return classified[l.range].second[l.page] == PageClass::kernel && !later->after_resume && known_of(l) == Known::no;
    };
    auto now_count = static_cast<std::uint64_t>(std::count_if(deferred_at.begin(), deferred_at.end(), copied_now));
    bool room_now = true;
    if ((tail.next + now_count) * kPageSize > s->arena_->size()) {
      try {
        s->arena_->grow_to((tail.next + now_count) * kPageSize);  // rare: many changed code pages
      } catch (const std::exception& e) {
        room_now = false;
        s->census_.lost_why = e.what();
      }
    }
    for (const auto& l : deferred_at) {
      if (!copied_now(l)) continue;
      Range& range = s->by_range_[l.range];
      if (!room_now) {
        s->lose(range, l.page);
        ++tail.pages[static_cast<std::size_t>(PageClass::kernel)];
        continue;
      }
      copy_page(tail, range, l.page, PageClass::kernel, Known::no, l.index);
    }
    s->census_.pause_slots = tail.next;
    for (const auto& l : deferred_at) {
      if (copied_now(l)) continue;
      Range& range = s->by_range_[l.range];
      PageClass cls = classified[l.range].second[l.page];
      if (later->after_resume && cls == PageClass::kernel) {
        // Read once the guest runs again (fill_known): whether it is all zeros is not known now.
        s->unfilled_.push_back({tail.next, kFromRam, range.range.start + l.page * kPageSize});
        range.slot[l.page] = tail.next++;
        ++tail.pages[static_cast<std::size_t>(cls)];
        continue;
      }
      copy_page(tail, range, l.page, cls, known_of(l), l.index);
    }
  }
  for (const Part* part : {&first, &second})
    for (std::size_t c = 0; c < kPageClassCount; ++c) {
      s->census_.pages[c] += part->pages[c];
      s->census_.total_pages += part->pages[c];
    }
  s->slots_ = tail.next;
  s->census_.copied_bytes = (static_cast<std::uint64_t>(first.next) + (two ? second.next - second.base : 0)) * kPageSize;
  for (const auto& u : s->unfilled_) ++(u.known != kFromRam ? s->census_.known_pages : s->census_.after_resume_pages);
  return s;
}

std::uint64_t MemorySnapshot::fill_known(const PhysicalMemory* ram) {
  if (!unfilled_.empty() && (static_cast<std::uint64_t>(unfilled_.back().slot) + 1) * kPageSize > arena_->size()) {
    // Their slots lie past the memory the arena had in the pause: it grows now, or they are lost.
    try {
      arena_->grow_to((static_cast<std::uint64_t>(unfilled_.back().slot) + 1) * kPageSize);
    } catch (const std::exception& e) {
      census_.lost_why = e.what();
      std::uint64_t usable = arena_->size() / kPageSize;
      std::erase_if(unfilled_, [&](const Unfilled& u) {
        if (u.slot < usable) return false;
        Range* r = range_of(u.paddr);  // take() gave the page its slot: it is in a range
        lose(*r, (u.paddr - r->range.start) / kPageSize);
        --(u.known != kFromRam ? census_.known_pages : census_.after_resume_pages);
        return true;
      });
      slots_ = static_cast<std::uint32_t>(std::min<std::uint64_t>(slots_, usable));  // every slot past it was one of them
    }
  }
  for (const auto& u : unfilled_) {
    std::byte* slot = buffer_ + static_cast<std::uint64_t>(u.slot) * kPageSize;
    if (u.known != kFromRam) {
      try {
        copy_known_(u.known, slot);
        continue;
      } catch (const std::exception&) {
        // The copy cannot say: the page as guest RAM holds it now is the next best thing.
        if (!ram) {
          std::memset(slot, 0, kPageSize);
          continue;
        }
      }
    }
    if (!ram) fail(ExitCode::failure, "a snapshot's pages left for after the resume need guest RAM to be read from");
    try {
      ram->read(u.paddr, std::span(slot, kPageSize));
    } catch (const MemoryFault&) {
      std::memset(slot, 0, kPageSize);  // a partial page at a range edge, as in take()
    }
  }
  std::uint64_t n = unfilled_.size();
  unfilled_.clear();
  return n;
}

bool MemorySnapshot::unfilled_slot(std::uint32_t slot) const {
  if (unfilled_.empty()) return false;
  // In slot order: take() appends them as it hands slots out.
  auto it = std::lower_bound(unfilled_.begin(), unfilled_.end(), slot, [](const Unfilled& u, std::uint32_t s) { return u.slot < s; });
  return it != unfilled_.end() && it->slot == slot;
}

MemorySnapshot::~MemorySnapshot() = default;

namespace {
constexpr char kIndexMagic[8] = {'I', 'M', 'S', 'N', 'A', 'P', '1', '\0'};

void put_u64(std::string& out, std::uint64_t v) { out.append(reinterpret_cast<const char*>(&v), sizeof v); }

std::uint64_t take_u64(std::string_view& in) {
  if (in.size() < 8) fail(ExitCode::bad_input, "the snapshot index is cut short");
  std::uint64_t v;
  std::memcpy(&v, in.data(), 8);
  in.remove_prefix(8);
  return v;
}
}  // namespace

// "IMSNAP1\0", the number of ranges, each range's start and size (whole pages), then each range's
// slots (u32 per page: an index into the copied pages, or kExcluded + its class). Host order.
std::string MemorySnapshot::index() const {
  std::string out(kIndexMagic, sizeof kIndexMagic);
  put_u64(out, by_range_.size());
  for (const auto& r : by_range_) {
    put_u64(out, r.range.start);
    put_u64(out, r.range.size);
  }
  for (const auto& r : by_range_)
    out.append(reinterpret_cast<const char*>(r.borrowed ? r.borrowed : r.slot.data()), r.range.size / kPageSize * sizeof(std::uint32_t));
  return out;
}

std::unique_ptr<MemorySnapshot> MemorySnapshot::adopt(std::string_view index, std::byte* pages, std::uint64_t page_bytes,
                                                      bool census) {
  if (index.size() < sizeof kIndexMagic || std::memcmp(index.data(), kIndexMagic, sizeof kIndexMagic) != 0)
    fail(ExitCode::bad_input, "not a snapshot index");
  index.remove_prefix(sizeof kIndexMagic);
  std::uint64_t count = take_u64(index);
  if (count == 0 || count > budget::kSnapshotRanges) fail(ExitCode::bad_input, "a snapshot index of {} ranges", count);
  std::unique_ptr<MemorySnapshot> s(new MemorySnapshot);
  std::uint64_t total_pages = 0, end = 0, copied = page_bytes / kPageSize;
  for (std::uint64_t i = 0; i < count; ++i) {
    PhysicalRange r{take_u64(index), take_u64(index)};
    if ((r.start | r.size) & (kPageSize - 1) || r.size == 0 || r.start < end || r.start + r.size < r.start)
      fail(ExitCode::bad_input, "a snapshot index with a misplaced range ({:#x}, {:#x} bytes)", r.start, r.size);
    end = r.start + r.size;
    total_pages += r.size / kPageSize;
    if (total_pages > budget::kSnapshotPages) fail(ExitCode::bad_input, "a snapshot index of more than {} pages", budget::kSnapshotPages);
    s->ranges_.push_back(r);
    s->by_range_.push_back({r, {}});
  }
  if (index.size() != total_pages * sizeof(std::uint32_t))
    fail(ExitCode::bad_input, "the snapshot index has {} bytes of slots for {} pages", index.size(), total_pages);
  for (auto& r : s->by_range_) {
    std::size_t n = r.range.size / kPageSize;
    if (!census && reinterpret_cast<std::uintptr_t>(index.data()) % alignof(std::uint32_t) == 0) {
      // Read in place: no copy, and no fresh pages to fault in (the repair VM's process for a
      // crash, under TCG, paid ≈ 20 µs for each of an index's 128 pages for a 512 MiB guest).
      r.borrowed = reinterpret_cast<const std::uint32_t*>(index.data());
      index.remove_prefix(n * sizeof(std::uint32_t));
      continue;  // slot_of() refuses a slot past the pages given
    }
    r.slot.resize(n);
    std::memcpy(r.slot.data(), index.data(), n * sizeof(std::uint32_t));
    index.remove_prefix(n * sizeof(std::uint32_t));
    if (!census) continue;  // slot_of() refuses a slot past the pages given
    for (std::uint32_t slot : r.slot) {
      if (slot < kExcluded ? slot >= copied : slot - kExcluded >= kPageClassCount)
        fail(ExitCode::bad_input, "a snapshot index names page slot {:#x} (there are {} pages)", slot, copied);
      ++s->census_.pages[slot < kExcluded ? static_cast<std::size_t>(PageClass::kernel) : slot - kExcluded];
    }
  }
  s->census_.total_pages = total_pages;
  s->census_.copied_bytes = copied * kPageSize;
  s->slots_ = static_cast<std::uint32_t>(copied);
  // The pages stay the caller's: they may be a mapping it keeps, or memory that is not a mapping
  // at all (tests and the fuzz target pass a vector's, which munmap would tear out of the heap).
  s->arena_ = SnapshotArena::borrow(pages, page_bytes, -1, [](std::uint64_t) {});
  s->buffer_ = pages;
  return s;
}

const MemorySnapshot::Range* MemorySnapshot::range_of(std::uint64_t paddr) const {
  for (const auto& r : by_range_)
    if (r.range.contains(paddr, 1)) return &r;
  return nullptr;
}

MemorySnapshot::Range* MemorySnapshot::range_of(std::uint64_t paddr) {
  return const_cast<Range*>(std::as_const(*this).range_of(paddr));
}

void MemorySnapshot::lose(Range& range, std::size_t page) {
  range.slot[page] = kExcluded + static_cast<std::uint32_t>(PageClass::kernel);
  ++census_.lost_pages;
}

std::uint32_t MemorySnapshot::slot_of(std::uint64_t paddr) const {
  const Range* r = range_of(paddr);
  if (!r) return kExcluded + 0xf;
  std::size_t page = (paddr - r->range.start) / kPageSize;
  std::uint32_t s = r->borrowed ? r->borrowed[page] : r->slot[page];
  return s < kExcluded && s >= slots_ ? kExcluded + 0xf : s;  // an adopted index naming a page not given
}

PageClass MemorySnapshot::page_class(std::uint64_t paddr) const {
  std::uint32_t s = slot_of(paddr);
  if (s < kExcluded) return PageClass::kernel;
  std::uint32_t c = s - kExcluded;
  return c < kPageClassCount ? static_cast<PageClass>(c) : PageClass::free;
}

const std::byte* MemorySnapshot::page_data(std::uint64_t paddr) const {
  std::uint32_t s = slot_of(paddr);
  return s < kExcluded && !unfilled_slot(s) ? buffer_ + static_cast<std::uint64_t>(s) * kPageSize : nullptr;
}

void MemorySnapshot::read(std::uint64_t address, std::span<std::byte> out) const {
  std::size_t done = 0;
  while (done < out.size()) {
    std::uint64_t a = address + done;
    std::size_t n = std::min<std::size_t>(out.size() - done, kPageSize - (a & (kPageSize - 1)));
    std::uint32_t s = slot_of(a);
    if (s < kExcluded && unfilled_slot(s)) {
      throw MemoryFault(a, out.size() - done, "not filled in yet (known elsewhere, copied after the guest resumed)");
    } else if (s < kExcluded) {
      std::memcpy(out.data() + done, buffer_ + static_cast<std::uint64_t>(s) * kPageSize + (a & (kPageSize - 1)), n);
    } else if (s == kExcluded + static_cast<std::uint32_t>(PageClass::zero)) {
      std::memset(out.data() + done, 0, n);
    } else {
      std::uint32_t c = s - kExcluded;
      throw MemoryFault(a, out.size() - done,
                        c < kPageClassCount ? std::string("left out of the snapshot (") + to_string(static_cast<PageClass>(c)) + " page)"
                                            : std::string("not guest RAM"));
    }
    done += n;
  }
}

void MemorySnapshot::write(std::uint64_t address, std::span<const std::byte> data) {
  std::size_t done = 0;
  while (done < data.size()) {
    std::uint64_t a = address + done;
    std::size_t n = std::min<std::size_t>(data.size() - done, kPageSize - (a & (kPageSize - 1)));
    std::uint32_t s = slot_of(a);
    if (s >= kExcluded || unfilled_slot(s)) throw MemoryFault(a, n, "only copied pages of a snapshot can be changed");
    std::memcpy(buffer_ + static_cast<std::uint64_t>(s) * kPageSize + (a & (kPageSize - 1)), data.data() + done, n);
    done += n;
  }
}

}  // namespace immortal
