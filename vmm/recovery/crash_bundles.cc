#include "recovery/crash_bundles.h"

#include "base/budgets.h"
#include "base/error.h"
#include "dump/panic_line.h"
#include "repair/repair_image.h"

#include <fmt/format.h>
#include <malloc.h>

namespace immortal::vmm {

CrashBundles::CrashBundles(BundleSettings settings, std::string guest, bool recovery_enabled, const EventLog& events,
                           Say say, Event event)
    : recorder_([&] {
        settings.guest = guest;
        return std::move(settings);
      }()),
      guest_(std::move(guest)),
      recovery_enabled_(recovery_enabled),
      events_(events),
      say_(std::move(say)),
      event_(std::move(event)) {}

bool CrashBundles::busy() const { return recorder_.writing() >= budget::kBundleJobs; }

BundleCapture CrashBundles::capture(Machine& machine, LiveKernel& live, std::vector<X86Registers> registers,
                                    int crash_cpu, const KnownPages* code, bool beside_repair) {
  // A crash loop must not pile up snapshots of guest memory: beyond budget::kBundleJobs being
  // written, the crash gets no copy (its bundle is skipped, and said so).
  if (busy()) return BundleCapture{};
  // Which pages to copy is the page-class agent's to say (struct page is guest data); without
  // it, or when it fails or is late, every non-zero page is copied: a larger dump, never a
  // wrong one.
  const RamClasses* classes = nullptr;
  std::string filter;
  auto asked = Clock::now();
  if (!recorder_.settings().filter) {
    filter = "none: every non-zero page copied";
  } else if (!classes_) {
    filter = "none (" + (classes_problem_.empty() ? std::string("no page-class agent") : classes_problem_) +
             "): every non-zero page copied";
  } else if ((classes = classes_->classify(Deadline::in(kClassifyWait)))) {
    filter = "struct page, read by the page-class agent: free, user and page-cache pages left out (makedumpfile dump level 31)";
  } else {
    filter = "none (" + classes_->why() + "): every non-zero page copied";
    say_("the bundle's copy of memory is not filtered: " + classes_->why());
  }
  double classify_ms = ms_since(asked);
  // The report agent appends panic()'s first line to the copy's log: the pages that record will
  // be written into are copied even if never used yet (all zeros). A few reads of the ring's
  // heads; only with the kernel view already built (building one has no place in a pause).
  std::vector<std::uint64_t> keep;
  if (crash_cpu >= 0)
    if (Kernel* kernel = live.built()) keep = log_append_pages(*kernel, kMaxPanicLine);
  std::optional<RamClasses> every_page;  // no classes: every page is a candidate
  if (!classes) classes = &every_page.emplace(unclassified_ram(machine.memory()));
  BundleCapture c = capture_guest(machine, live.profile() ? &live.profile()->head() : nullptr, std::move(registers), crash_cpu, *classes,
                                  std::move(filter), recorder_.arena(), keep, std::move(prepared_index_), code,
                                  beside_repair ? 1 : 2);
  c.classify_ms = classify_ms;
  if (c.memory) recorder_.outgrown(c.memory->census());
  return c;
}

void CrashBundles::hold(const repair::CrashRecord& record, BundleCapture capture,
                        std::shared_ptr<const PackedProfile> profile, const json& analysis, const json& plan,
                        const std::string& decision, const std::string& reason) {
  if (pending_) finish("superseded by a later crash before its outcome was known");
  BundleJob job;
  job.guest = guest_;
  job.crash = record.id;
  job.capture = std::move(capture);
  job.profile = std::move(profile);
  job.crash_record = repair::to_json(record);
  job.analysis = analysis;
  job.plan = plan;
  job.recovery = {{"enabled", recovery_enabled_}, {"decision", decision}, {"reason", reason}};
  job.timings = json::object();
  pending_ = std::move(job);
}

void CrashBundles::add_timings(const json& timings) {
  if (pending_) pending_->timings.update(timings);
}

void CrashBundles::add_recovery_note(const std::string& key, const std::string& value) {
  if (pending_) pending_->recovery[key] = value;
}

void CrashBundles::fill_known() {
  if (pending_ && pending_->capture.memory) pending_->capture.memory->fill_known();
}

void CrashBundles::finish(const std::string& outcome, json more_timings) {
  if (!pending_) return;
  fill_known();
  BundleJob job = std::move(*pending_);
  pending_.reset();
  job.recovery["outcome"] = outcome;
  job.timings.update(more_timings);
  if (!job.capture.memory) {
    std::string why = fmt::format("{} bundles were being written when it crashed", budget::kBundleJobs);
    event_("bundle-skipped", {{"crash", job.crash}, {"reason", "crash"}, {"why", why}});
    say_(fmt::format("no bundle for crash {}: {}", job.crash, why));
    return;
  }
  job.events = events_.of_crash(job.crash);
  recorder_.submit(std::move(job));
}

void CrashBundles::set_code_pages(std::vector<repair::WholeCodePage> pages) {
  code_pages_ = std::move(pages);
  on_demand_code_.pages.clear();
  for (const auto& page : code_pages_) on_demand_code_.pages.push_back(page.physical);
}

BundleCapture CrashBundles::capture_on_demand(Machine& machine, LiveKernel& live, std::vector<X86Registers> registers) {
  // A bundle's pause is its copy. The kernel's code is a fifth of it (23 of about 105 MiB at
  // 2 GiB) and changes only where the kernel patches itself: read after the resume, and said so.
  return capture(machine, live, std::move(registers), -1, on_demand_code_.pages.empty() ? nullptr : &on_demand_code_);
}

std::unique_ptr<MemorySnapshot> CrashBundles::snapshot_for_repair_load(Machine& machine, LiveKernel& live) {
  // Never, rather than a long wait: a copy of every page would not fit an arena.
  if (!classes_problem_.empty()) fail(ExitCode::unsupported, "{}", classes_problem_);
  if (classes_ && classes_->failed()) fail(ExitCode::unsupported, "the page-class agent failed: {}", classes_->why());
  if (busy() || !classes_ || arena_waits_ || !classes_->ready(Deadline::in(std::chrono::milliseconds(0)))) return nullptr;
  auto arena = recorder_.pool_arena();
  if (!arena) return nullptr;
  auto asked = Clock::now();
  BundleCapture c = while_paused(machine, [&]() -> BundleCapture {
    const RamClasses* classes = classes_->classify(Deadline::in(kClassifyWait));
    if (!classes) return {};
    return capture_guest(machine, live.profile() ? &live.profile()->head() : nullptr, {}, -1, *classes,
                         "struct page, read by the page-class agent (a repair VM's load)", std::move(arena), {},
                         std::move(prepared_index_), on_demand_code_.pages.empty() ? nullptr : &on_demand_code_, 2);
  });
  double round_trip_ms = ms_since(asked);
  if (!c.memory || c.memory->pool_slot() < 0) return nullptr;
  // The guest was stopped for it: said, as for any other pause we cause.
  event_("repair-load-snapshot", {{"pages", c.memory->pages_bytes() / MemorySnapshot::kPageSize},
                                  {"arena", c.memory->pool_slot()}, {"copy_ms", c.pause_ms},
                                  {"paused_round_trip_ms", round_trip_ms}});
  return std::move(c.memory);
}

void CrashBundles::take_now(BundleCapture capture, const PhysicalMemory& guest_ram, std::shared_ptr<const PackedProfile> profile,
                            json timings, Written written) {
  if (capture.memory) {
    auto t0 = Clock::now();
    capture.memory->fill_known(&guest_ram);
    timings["after_resume_ms"] = ms_since(t0);
  }
  BundleJob job;
  job.guest = guest_;
  job.reason = "on-demand";
  job.capture = std::move(capture);
  job.profile = std::move(profile);
  job.timings = std::move(timings);
  job.ticket = next_ticket_++;
  waiting_[job.ticket] = std::move(written);
  recorder_.submit(std::move(job));
}

std::vector<BundleResult> CrashBundles::poll() {
  auto results = recorder_.poll();
  for (const auto& r : results) {
    json fields = {{"reason", r.reason}, {"write_ms", r.write_ms}};
    if (r.reason == "crash") fields["crash"] = r.crash;
    if (r.path.empty()) {
      fields["error"] = r.error;
      event_("bundle-failed", fields);
      say_("writing a bundle failed: " + r.error);
    } else {
      fields["path"] = r.path;
      fields["vmcore_bytes"] = r.vmcore_bytes;
      if (!r.removed.empty()) fields["removed"] = r.removed;
      event_("bundle", fields);
      say_(fmt::format("bundle written: {} ({:.0f} ms)", r.path, r.write_ms));
    }
    if (auto it = waiting_.find(r.ticket); r.ticket && it != waiting_.end()) {
      auto written = std::move(it->second);
      waiting_.erase(it);
      written(r);
    }
  }
  // The writer's buffers are freed by now: what sits in the C library's free lists goes back.
  if (!results.empty()) ::malloc_trim(0);
  return results;
}

void CrashBundles::prepare_arena(std::uint64_t profile_number, Machine& machine, LiveKernel& live) {
  // The next snapshot's page index, made while the guest runs (after each snapshot took it).
  if (!prepared_index_) prepared_index_ = MemorySnapshot::prepare(machine.memory());
  if (profile_number && profile_number != arena_profile_) {
    // A new profile (a new boot, a module loaded): a page-class agent for it; the arena is sized
    // once it has classified the guest's pages.
    arena_profile_ = profile_number;
    classes_.reset();
    classes_problem_.clear();
    arena_waits_ = false;
    if (!recorder_.settings().filter) {
      prepare_arena_for(machine, unclassified_ram(machine.memory()));
      return;
    }
    try {
      auto ram = machine.ram_file();
      if (!ram) fail(ExitCode::unsupported, "guest RAM is not in a file the page-class agent can map");
      classes_ = std::make_unique<PageClassAgent>(find_repair_agent(recorder_.settings().agent), *ram, machine.memory(),
                                                  live.get());
      arena_waits_ = true;
    } catch (const std::exception& e) {
      classes_problem_ = std::string("no page-class agent: ") + e.what();
      say_("bundle snapshots will copy every non-zero page (" + classes_problem_ + ")");
    }
  }
  if (arena_waits_ && classes_ && (classes_->ready(Deadline::in(std::chrono::milliseconds(0))) || classes_->failed())) {
    arena_waits_ = false;
    if (classes_->failed()) say_("bundle snapshots will copy every non-zero page: " + classes_->why());
    else prepare_arena_for(machine, classes_->last());
  }
}

void CrashBundles::prepare_arena_for(Machine& machine, const RamClasses& classes) {
  try {
    recorder_.prepare(machine.memory(), classes, on_demand_code_.pages);
    if (!told_arena_source_) say_("bundle snapshots are copied into memory prepared in the " + recorder_.arena_source());
    told_arena_source_ = true;
  } catch (const std::exception& e) {
    say_(std::string("no memory prepared for bundle snapshots (a crash will pause longer): ") + e.what());
  }
}

void CrashBundles::stop() {
  if (pending_) finish("unknown: the instance stopped before the outcome was known");
  if (recorder_.writing()) {
    say_(fmt::format("waiting for {} bundle(s) to be written", recorder_.writing()));
    recorder_.drain(std::chrono::minutes(5));
  }
  poll();
}

json CrashBundles::status() const {
  return {{"dir", recorder_.settings().dir}, {"written", recorder_.written()}, {"writing", recorder_.writing()},
          {"last", recorder_.last_path()}};
}

}  // namespace immortal::vmm
