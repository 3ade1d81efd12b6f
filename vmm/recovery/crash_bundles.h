// The bundles of one guest (docs/bundle-format.md), from the supervisor's side: a crash's bundle
// is held from the moment its memory is copied (the guest stopped) until its outcome is known
// (recovered, rebooted, frozen …), then written in the background; `immortal bundle` asks for
// one of the guest as it is. Knows nothing of who asked: an on-demand bundle reports back
// through the callback it was given.
#pragma once

#include "engine/crash_record.h"
#include "engine/text_precheck.h"
#include "live_kernel.h"
#include "machine.h"
#include "recovery/bundle_recorder.h"
#include "recovery/event_log.h"
#include "recovery/page_class_agent.h"

#include <functional>
#include <map>
#include <optional>

namespace immortal::vmm {

class CrashBundles {
 public:
  using Say = std::function<void(const std::string&)>;
  using Event = std::function<void(const std::string& name, json fields)>;
  using Written = std::function<void(const BundleResult&)>;
  CrashBundles(BundleSettings settings, std::string guest, bool recovery_enabled, const EventLog& events, Say say,
               Event event);

  // budget::kBundleJobs bundles are being written: a new capture is refused (on demand) or
  // skipped (a crash: its bundle is reported as skipped, event bundle-skipped).
  bool busy() const;
  // Copies the stopped guest's memory for a bundle (kernel: the live view, when there is one);
  // nothing while busy().
  // code: pages known elsewhere (MemorySnapshot::take), filled in by fill_known().
  // beside_repair: the copy runs beside a repair analysis that needs the host's cores more (the
  // guest resumes when both are done, and the repair VM's analysis is the longer): one thread
  // copies. Else the copy is the longest part of the pause and may use two.
  BundleCapture capture(Machine& machine, LiveKernel& kernel, std::vector<X86Registers> registers, int crash_cpu,
                        const KnownPages* code = nullptr, bool beside_repair = false);
  // An on-demand bundle's copy (the guest stopped for it alone): the kernel's code pages (as
  // set_code_pages() named them) are left for after the resume, when take_now() reads them from
  // the running guest (docs/bundle-format.md, "The kernel's code in an on-demand bundle").
  BundleCapture capture_on_demand(Machine& machine, LiveKernel& kernel, std::vector<X86Registers> registers);
  // The pages the kernel's code lies in whole (repair::whole_code_pages of the repair's healthy
  // copy), made once per repair image; none without one. Their bytes point into that copy: valid
  // until the image is rebuilt, which clears them first.
  void set_code_pages(std::vector<repair::WholeCodePage> pages);
  const std::vector<repair::WholeCodePage>& code_pages() const { return code_pages_; }
  // The pending crash's snapshot takes the pages it was told are known elsewhere, now that the
  // guest runs again (finish() does it too, for a path that did not).
  void fill_known();
  // A crash's bundle, waiting for its outcome (a crash still pending is finished as superseded).
  void hold(const repair::CrashRecord& record, BundleCapture capture, std::shared_ptr<const PackedProfile> profile,
            const json& analysis, const json& plan, const std::string& decision, const std::string& reason);
  bool holding(std::uint64_t crash) const { return pending_ && pending_->crash == crash; }
  // Adds to the pending crash's bundle (no-op when none is held).
  void add_timings(const json& timings);
  void add_recovery_note(const std::string& key, const std::string& value);
  double pending_snapshot_ms() const { return pending_ ? pending_->capture.pause_ms : 0; }
  // The pending crash's outcome is known: write its bundle (with the crash's events).
  void finish(const std::string& outcome, json more_timings = json::object());
  // A bundle of the guest as it is now, written in the background; `written` is called with the
  // result from poll(). Called once the guest runs again: the pages capture_on_demand() left for
  // then are read from guest_ram first.
  void take_now(BundleCapture capture, const PhysicalMemory& guest_ram, std::shared_ptr<const PackedProfile> profile,
                json timings, Written written);
  // Results of finished writes (events emitted, on-demand callbacks called).
  std::vector<BundleResult> poll();
  // A snapshot of the running guest for a repair VM to load a profile from (it has no window onto
  // the guest's RAM): the guest paused for the copy as for an on-demand bundle, the kernel's code
  // pages left out (the agent reads them from the healthy copy). Only into a free arena of the
  // host pool and only once this profile's page classes are known: nullptr (ask again later)
  // while bundles are written, while the page-class agent starts, or with every arena busy, so
  // that it never pauses the guest long. Throws Error when the guest cannot be paused, and when
  // no snapshot can be filtered (no page-class agent for this guest).
  std::unique_ptr<MemorySnapshot> snapshot_for_repair_load(Machine& machine, LiveKernel& kernel);
  // The host pool's snapshot arenas as a repair VM's read-only windows (BundleRecorder).
  std::vector<ArenaPool::Window> arena_windows(std::uint64_t guest_ram) { return recorder_.arena_windows(guest_ram); }
  // Makes the arena for fast snapshots fit the guest of this profile (once per profile).
  void prepare_arena(std::uint64_t profile_number, Machine& machine, LiveKernel& kernel);
  // How long a snapshot waits for the page-class agent (it is inside the guest's pause).
  static constexpr std::chrono::milliseconds kClassifyWait{2000};
  // The instance stops: pending outcome unknown; wait (bounded) for writers.
  void stop();
  json status() const;

 private:
  BundleRecorder recorder_;
  std::string guest_;
  bool recovery_enabled_;
  const EventLog& events_;
  Say say_;
  Event event_;
  std::optional<BundleJob> pending_;
  void prepare_arena_for(Machine& machine, const RamClasses& classes);
  std::uint64_t arena_profile_ = 0;
  std::unique_ptr<PageClassAgent> classes_;  // for the current profile
  std::unique_ptr<MemorySnapshot> prepared_index_;  // the next snapshot's page index, made ahead
  std::vector<repair::WholeCodePage> code_pages_;  // set_code_pages()
  KnownPages on_demand_code_{{}, {}, {}, /*after_resume=*/true};  // their addresses; made ahead, not in a pause
  std::string classes_problem_;               // why there is none
  bool told_arena_source_ = false;
  bool arena_waits_ = false;                  // for classes_'s first classification
  std::uint64_t next_ticket_ = 1;
  std::map<std::uint64_t, Written> waiting_;  // on-demand bundles by ticket
};

}  // namespace immortal::vmm
