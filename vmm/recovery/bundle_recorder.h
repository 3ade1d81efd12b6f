// Diagnosis bundles of a supervised guest (docs/bundle-format.md). Two halves:
//  - capture(), with the guest stopped: a private copy of the memory a dump needs (the pause
//    is this copy only), the vCPUs' registers, VMCOREINFO;
//  - the recorder's worker threads, with the guest running again: the report (its kernel parts
//    read from the copy by the sandboxed report agent, recovery/report_agent.h), the vmcore,
//    dmesg, the profile, the crash's events, written atomically; retention.
// Results come back to the supervisor's thread through poll(), which also emits the events.
#pragma once

#include "base/clock.h"
#include "bundle/retention.h"
#include "recovery/arena_pool.h"
#include "dump/memory_snapshot.h"
#include "kernel/kernel.h"
#include "machine.h"
#include "profile/packed_profile.h"

#include <nlohmann/json.hpp>

#include <atomic>
#include <chrono>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

namespace immortal::vmm {

using nlohmann::json;

struct BundleSettings {
  std::string dir;                    // where this guest's bundles go
  std::string guest;                  // whose they are: retention touches only these
  bundle::RetentionPolicy retention;  // --bundle-keep, --bundle-max-size
  bool archive = false;               // --bundle-compress: NAME.tar.zst instead of a directory
  bool filter = true;                 // --bundle-memory kernel (true) | all
  std::string agent;                  // --repair-agent: the report agent's binary ("" = the usual places)
  // The host's snapshot arena pool (ArenaPool::directory_for the runtime directory); empty, or
  // when it cannot be used: one arena of this instance's own.
  std::string arena_pool;
};

// What the stopped guest gave: everything else is derived from it later.
struct BundleCapture {
  std::unique_ptr<MemorySnapshot> memory;
  std::vector<X86Registers> registers;  // every vCPU
  int crash_cpu = -1;
  std::string vmcoreinfo;               // the note's text, from guest memory
  double pause_ms = 0;                  // how long the copy kept the guest stopped
  double classify_ms = 0;               // before the copy, the page-class agent's answer (guest stopped too)
  std::vector<std::string> adjustments; // changes made to the copy (docs/bundle-format.md)
};

// Copies the stopped guest: the pages classes keeps (the page-class agent's; all `kernel` for
// every non-zero page), `filter` saying how they were chosen. profile: for VMCOREINFO's place.
// keep: pages copied even when all zeros; prepared: a page index made ahead; threads: for the copy
// (MemorySnapshot::take).
BundleCapture capture_guest(Machine& machine, const GuestProfile* profile, std::vector<X86Registers> registers,
                            int crash_cpu, const RamClasses& classes, std::string filter,
                            std::shared_ptr<SnapshotArena> arena, const std::vector<std::uint64_t>& keep = {},
                            std::unique_ptr<MemorySnapshot> prepared = nullptr, const KnownPages* later = nullptr,
                            unsigned threads = 2);

struct BundleJob {
  std::string guest;
  std::string reason = "crash";  // or "on-demand"
  std::uint64_t crash = 0;
  BundleCapture capture;
  std::shared_ptr<const PackedProfile> profile;
  json crash_record, analysis, plan;  // from the recovery path (may be null)
  json recovery;                       // enabled, decision, reason, outcome
  json timings;
  std::vector<json> events;            // this crash's events so far
  std::uint64_t ticket = 0;            // tells on-demand bundles apart (0 for a crash's)
};

struct BundleResult {
  std::uint64_t crash = 0;
  std::string reason;
  std::string path;   // empty on failure
  std::string error;
  double write_ms = 0;
  std::uint64_t vmcore_bytes = 0;
  std::vector<std::string> removed;  // by retention
  std::uint64_t ticket = 0;
};

class BundleRecorder {
 public:
  explicit BundleRecorder(BundleSettings settings);
  ~BundleRecorder();  // waits for writers (bounded), abandoning what is not done

  const BundleSettings& settings() const { return settings_; }
  // Prepares warm arenas large enough for a snapshot of this guest now (plus headroom), so a
  // crash's pause is a plain copy: the host's pool's, else one of our own. Called when the
  // guest is up; cheap when already prepared. Throws Error when the memory cannot be had.
  // later: the pages a snapshot fills in after the resume (KnownPages: the kernel's code). A pool
  // arena holds no memory for them ahead, only room to grow into while a snapshot holds it.
  void prepare(const PhysicalMemory& ram, const RamClasses& classes, const std::vector<std::uint64_t>& later = {});
  // After a snapshot: one that did not fit the arena has it grown (with the spare, from poll()).
  void outgrown(const SnapshotCensus& census);
  // A warm arena no snapshot is using, else nullptr (the snapshot allocates its own, slower).
  std::shared_ptr<SnapshotArena> arena();
  // A free arena of the host pool for a snapshot that is not a bundle (a repair VM's load): no
  // spare is prepared for it. nullptr without a pool or when none is free.
  std::shared_ptr<SnapshotArena> pool_arena() { return pool_ ? pool_->acquire() : nullptr; }
  // The host pool's arenas as a repair VM's windows for a guest of `guest_ram` bytes
  // (ArenaPool::windows); none without a pool. Throws Error when they cannot be sized.
  std::vector<ArenaPool::Window> arena_windows(std::uint64_t guest_ram) { return pool_ ? pool_->windows(guest_ram) : std::vector<ArenaPool::Window>{}; }
  // Where snapshots are prepared: "host pool DIR" or "own arena (why not the pool)".
  std::string arena_source() const;
  // Starts writing in the background.
  void submit(BundleJob job);
  // Finished bundles since the last call; starts preparing the pool's spare arena when a bundle
  // took the first (call it from the supervisor's loop, outside any pause).
  std::vector<BundleResult> poll();
  // Waits up to timeout for writers to finish (at stop).
  void drain(std::chrono::milliseconds timeout);
  std::size_t writing() const { return active_.load(); }
  const std::string& last_path() const { return last_path_; }
  std::uint64_t written() const { return written_; }

 private:
  BundleSettings settings_;
  std::mutex mutex_;
  std::deque<BundleResult> done_;
  std::vector<std::thread> threads_;
  std::atomic<std::size_t> active_{0};
  std::string last_path_;
  std::uint64_t written_ = 0;
  std::unique_ptr<ArenaPool> pool_;
  std::string pool_problem_;                 // why there is no pool
  std::shared_ptr<SnapshotArena> own_;       // without a pool; guarded by mutex_
  std::uint64_t arena_bytes_ = 0;            // guarded by mutex_
  std::uint64_t arena_limit_ = 0;            // how far a snapshot may grow one (its guest's RAM); mutex_
  // The pool's second arena, prepared once a bundle was taken. Started from poll(), after the
  // pause: allocating and zeroing it (≈ 150 MiB at 2 GiB) used to start beside the first copy,
  // competing with it for the cores and memory bandwidth inside the guest's pause.
  void start_spare();
  // Also prepares again, a second later, what another supervisor's snapshot held at the time.
  std::thread spare_;
  bool spare_wanted_ = false;                // under mutex_
  bool retry_ = false;                       // under mutex_
  Clock::time_point retry_at_{};             // under mutex_
  void retry_later();                        // mutex_ held
  std::atomic<bool> preparing_spare_{false};
  std::atomic<bool> spare_ready_{false};
  // The spare is kept while crashes come in quick succession, and given back this long after the
  // last bundle was written (the host then holds one prepared arena, as before any crash).
  static constexpr auto kSpareHold = std::chrono::seconds(60);
  std::optional<Clock::time_point> release_spare_at_;  // under mutex_
};

// The work of one job (exposed for tests): writes the bundle, returns its path.
BundleResult write_bundle(const BundleSettings& settings, BundleJob& job);

}  // namespace immortal::vmm
