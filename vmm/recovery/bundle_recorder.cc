#include "recovery/bundle_recorder.h"

#include "base/clock.h"
#include "base/error.h"
#include "base/unique_fd.h"
#include "bundle/bundle_format.h"
#include "bundle/bundle_writer.h"
#include "bundle/report_text.h"
#include "dump/vmcore_writer.h"
#include "engine/snapshot_report.h"
#include "recovery/event_log.h"
#include "recovery/report_agent.h"
#include "repair/repair_image.h"

#include <fcntl.h>
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <condition_variable>

namespace immortal::vmm {

namespace {


// The crash as the report's first lines tell it, from the analysis the recovery path made.
json crash_summary(const BundleJob& job) {
  const json& a = job.analysis;
  const json& r = job.crash_record;
  json c = {{"id", job.crash}};
  auto copy = [&](const json& from, const char* key, const char* as) {
    if (from.is_object() && from.contains(key)) c[as] = from[key];
  };
  copy(r, "time", "time");
  copy(r, "caught_by", "caught_by");
  copy(r, "intercepted_at", "intercepted_at");
  for (const char* k : {"kind", "context", "cpu", "message", "oops", "module", "entry", "entry_caller", "locks_held", "hung_tasks"})
    copy(a, k, k);
  if (a.is_object() && a.contains("task") && a["task"].is_object())
    c["task"] = {{"pid", a["task"].value("pid", -1)}, {"comm", a["task"].value("comm", "")}};
  std::string function;
  if (a.is_object() && a.contains("fault") && a["fault"].is_object()) function = a["fault"].value("function", "");
  if (function.empty() && a.is_object()) function = a.value("panic_caller", "");
  if (!function.empty()) c["function"] = function;
  return c;
}

// Bundle writing is background work: it must not take the CPU from the guest (or from the
// supervisor's next crash). Linux applies nice per thread.
void lower_thread_priority() { ::setpriority(PRIO_PROCESS, static_cast<id_t>(::gettid()), 10); }

std::string sanitize_for_name(std::string s) {
  for (char& ch : s)
    if (!std::isalnum(static_cast<unsigned char>(ch)) && ch != '-' && ch != '_' && ch != '.') ch = '-';
  return s;
}

}  // namespace

BundleCapture capture_guest(Machine& machine, const GuestProfile* profile, std::vector<X86Registers> registers,
                            int crash_cpu, const RamClasses& classes, std::string filter,
                            std::shared_ptr<SnapshotArena> arena, const std::vector<std::uint64_t>& keep,
                            std::unique_ptr<MemorySnapshot> prepared, const KnownPages* later, unsigned threads) {
  auto t0 = Clock::now();
  BundleCapture c;
  c.registers = std::move(registers);
  c.crash_cpu = crash_cpu;
  c.memory = MemorySnapshot::take(machine.memory(), classes, std::move(filter), std::move(arena), keep, std::move(prepared), later,
                                   threads);
  if (profile) {
    // From the copy; from guest RAM (still stopped) should its page not have been copied.
    auto text = read_vmcoreinfo_note(*c.memory, profile->vmcoreinfo_paddr, profile->vmcoreinfo_size);
    if (!text) text = read_vmcoreinfo_note(machine.memory(), profile->vmcoreinfo_paddr, profile->vmcoreinfo_size);
    if (text) c.vmcoreinfo = *text;
  }
  c.pause_ms = ms_since(t0);
  // Nothing of the copy is read here: panic_cpu and the panic line are the report agent's
  // (recovery/report_agent.h), like everything else that reads guest structures.
  return c;
}

BundleResult write_bundle(const BundleSettings& settings, BundleJob& job) {
  auto t0 = Clock::now();
  BundleResult result{job.crash, job.reason, "", "", 0, 0, {}, job.ticket};
  std::string name = fmt::format("{}-{}-{}", sanitize_for_name(job.guest), sanitize_for_name(utc_now()),
                                 job.reason == "crash" ? fmt::format("crash{}", job.crash) : job.reason);
  try {
    bundle::BundleWriter writer(settings.dir, name);
    MemorySnapshot& memory = *job.capture.memory;
    json problems = json::array();
    const std::size_t vcpus = job.capture.registers.size();
    // The profile first: the report agent reads it from the bundle (the one this crash had).
    ReportParts parts;
    double report_agent_ms = 0;
    if (job.profile) {
      job.profile->save(writer.path_of(bundle::kProfileDir));
      writer.add_written_tree(bundle::kProfileDir);
      repair::SnapshotReportRequest request;
      request.record.registers = job.capture.registers;
      request.record.vcpu = job.capture.crash_cpu;
      if (job.crash_record.is_object()) {
        request.record.caught_by = job.crash_record.value("caught_by", "");
        request.record.intercepted_at = job.crash_record.value("intercepted_at", "");
      }
      request.vmcoreinfo = job.capture.vmcoreinfo;
      if (job.analysis.is_object() && job.analysis.contains("task") && job.analysis["task"].is_object())
        request.victim_pid = job.analysis["task"].value("pid", -1);
      request.analyse = job.reason == "crash" && job.analysis.is_null();
      auto asked = Clock::now();
      try {
        parts = read_report_parts(find_repair_agent(settings.agent), memory, writer.path_of(bundle::kProfileDir),
                                  request.to_json(), std::chrono::seconds(budget::kReportAgentSeconds));
      } catch (const std::exception& e) {
        parts.pids.assign(vcpus, 0);
        parts.problems.push_back(std::string("the report's kernel details are missing: ") + e.what());
      }
      report_agent_ms = ms_since(asked);
    } else {
      parts.pids.assign(vcpus, 0);
      parts.problems.push_back("no healthy-guest profile: the report has no kernel details");
    }
    for (auto& p : parts.problems) problems.push_back(std::move(p));
    for (auto& a : parts.adjustments) job.capture.adjustments.push_back(std::move(a));
    if (job.analysis.is_null() && !parts.analysis.is_null()) job.analysis = parts.analysis;

    json report = {{"format", "immortal-report"}, {"version", bundle::kFormatVersion}, {"bundle", name},
                   {"guest", job.guest}, {"reason", job.reason}};
    report["kernel"] = {{"release", job.profile ? job.profile->head().kernel_release : ""},
                        {"boot_id", job.profile ? job.profile->head().boot_id : ""}};
    if (job.reason == "crash") {
      report["crash"] = crash_summary(job);
      report["recovery"] = job.recovery;
      if (job.plan.is_object() && job.plan.contains("actions")) report["recovery"]["actions"] = job.plan["actions"];
    }
    if (!parts.taint.is_null()) report["kernel"]["taint"] = parts.taint;
    if (parts.log.is_object() && report.contains("crash")) {
      if (!report["crash"].contains("message") || report["crash"]["message"] == "")
        report["crash"]["message"] = parts.log["panic_message"];
      report["crash"]["panic_message"] = parts.log["panic_message"];
    }
    std::vector<VmcoreCpu> cpus;
    json cpu_list = json::array();
    for (std::size_t i = 0; i < vcpus; ++i) {
      const auto& regs = job.capture.registers[i];
      cpus.push_back({parts.pids[i], regs});
      cpu_list.push_back(i < parts.cpus.size() ? parts.cpus[i] : json{{"cpu", i}, {"rip", fmt::format("{:#x}", regs.rip)}});
    }
    if (job.profile) report["cpus"] = cpu_list;
    const VmcoreLayout& layout = parts.layout;
    const std::string& dmesg = parts.dmesg;

    // The vmcore.
    VmcoreStats stats;
    {
      std::string path = writer.path_of(bundle::kVmcore);
      UniqueFd fd(::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600));
      if (!fd) fail_os(ExitCode::failure, "create " + path, errno);
      stats = write_vmcore(fd.get(), memory, cpus, job.capture.vmcoreinfo, layout);
      writer.add_written(bundle::kVmcore);
    }
    const auto& census = memory.census();
    json pages = json::object();
    for (int c = 0; c < kPageClassCount; ++c) pages[to_string(static_cast<PageClass>(c))] = census.pages[static_cast<std::size_t>(c)];
    report["memory"] = {{"ram_bytes", census.total_pages * MemorySnapshot::kPageSize}, {"pages", pages},
                        {"filter", census.filter}, {"copied_bytes", census.copied_bytes},
                        {"from_healthy_copy_pages", census.known_pages},
                        {"taken_after_resume_pages", census.after_resume_pages},
                        {"prepared_memory", census.warm_arena}};
    if (census.grown_in_pause_bytes) report["memory"]["grown_in_pause_bytes"] = census.grown_in_pause_bytes;
    if (census.lost_pages) {
      report["memory"]["lost_pages"] = census.lost_pages;
      problems.push_back(fmt::format("{} kernel pages were not taken (memory for their slots could not be had: {}); "
                                     "they read as not copied", census.lost_pages, census.lost_why));
    }
    report["vmcore"] = {{"bytes", stats.file_bytes}, {"segments", stats.segments}, {"data_pages", stats.data_pages},
                        {"layout", "kdump (/proc/vmcore): PT_NOTE, kernel image, direct map"},
                        {"adjustments", job.capture.adjustments}};
    json timings = job.timings.is_object() ? job.timings : json::object();
    timings["snapshot_pause_ms"] = job.capture.pause_ms;
    timings["report_agent_ms"] = report_agent_ms;
    if (!job.analysis.is_null()) report["analysis"] = job.analysis;
    if (!job.plan.is_null()) report["plan"] = job.plan;
    if (!job.crash_record.is_null()) report["record"] = job.crash_record;
    report["problems"] = problems;

    if (!dmesg.empty()) writer.add(bundle::kDmesg, dmesg);
    std::string events;
    for (const auto& e : job.events) events += e.dump(-1, ' ', false, json::error_handler_t::replace) + "\n";
    writer.add(bundle::kEvents, events);
    timings["write_ms"] = ms_since(t0);
    report["timings"] = timings;
    writer.add(bundle::kReportJson, report.dump(2, ' ', false, json::error_handler_t::replace) + "\n");
    writer.add(bundle::kReportText, bundle::render_report(report));
    json manifest = {{"created", utc_now()}, {"guest", job.guest}, {"reason", job.reason},
                     {"kernel_release", report["kernel"].value("release", "")}};
    if (job.reason == "crash") manifest["crash"] = job.crash;
    result.path = writer.commit(manifest, settings.archive);
    result.vmcore_bytes = stats.file_bytes;
    result.removed = bundle::apply_retention(settings.dir, settings.retention,
                                             {job.guest, sanitize_for_name(job.guest) + "-"});
  } catch (const std::exception& e) {
    result.error = e.what();
  }
  result.write_ms = ms_since(t0);
  return result;
}

BundleRecorder::BundleRecorder(BundleSettings settings) : settings_(std::move(settings)) {
  // Left by a supervisor of this guest that died while writing (a live writer's stay).
  if (!settings_.guest.empty()) bundle::remove_stale_partials(settings_.dir, sanitize_for_name(settings_.guest) + "-");
  if (settings_.arena_pool.empty()) {
    pool_problem_ = "no host pool configured";
  } else {
    try {
      pool_ = std::make_unique<ArenaPool>(settings_.arena_pool);
    } catch (const std::exception& e) {
      pool_problem_ = e.what();
    }
  }
}

BundleRecorder::~BundleRecorder() {
  drain(std::chrono::seconds(60));
  if (spare_.joinable()) spare_.join();
  for (auto& t : threads_)
    if (t.joinable()) t.detach();  // a writer that is still busy: the process is ending anyway
}

namespace {
// An arena's size for `need` bytes copied in a pause: a margin for the kernel's growth until the
// next profile re-sizes it (each module change), or a snapshot that outgrew it (outgrown()). One
// that outgrows it allocates its own copy: a longer pause, not a failure.
std::uint64_t with_margin(std::uint64_t need, std::uint64_t ram_bytes) {
  return std::min<std::uint64_t>(need + need / 8 + (8ull << 20), ram_bytes);
}
bool fits(std::uint64_t arena, std::uint64_t need) { return arena >= need + need / 16; }
}  // namespace

void BundleRecorder::prepare(const PhysicalMemory& ram, const RamClasses& classes, const std::vector<std::uint64_t>& later) {
  std::uint64_t ram_bytes = ram.total_size();
  // Reading each page to copy maps it into our view of guest RAM now, not in a pause.
  // Sized for a copy on two threads (a bundle alone, a repair load); one on one thread needs less.
  KernelPageCount kernel = touch_kernel_pages(ram, classes, pool_ ? later : std::vector<std::uint64_t>{}, 2);
  // A pool's arena holds what a pause copies: the slots its copy reaches, which leaves out the
  // pages that are all zeros (a third of the kernel's class in an idle guest: tables allocated
  // zeroed, and never written) but for the gap the first of its two threads leaves, and the code
  // read after the resume; it can grow for more (in the pause, slower; then it is re-sized,
  // outgrown()). An arena of our own cannot grow: it holds every page of the class.
  std::uint64_t need = (pool_ ? kernel.pause_slots : kernel.pages) * MemorySnapshot::kPageSize;
  std::lock_guard lock(mutex_);
  arena_limit_ = ram_bytes;
  if (fits(arena_bytes_, need)) return;
  arena_bytes_ = with_margin(need, ram_bytes);
  spare_ready_ = false;
  if (pool_) {
    if (!pool_->prepare(arena_bytes_, arena_limit_, 1)) retry_later();  // a second one once a bundle is taken (arena())
  } else {
    own_.reset();  // a snapshot still using the old one keeps it until it is done
    own_ = SnapshotArena::make(arena_bytes_);
  }
}

void BundleRecorder::outgrown(const SnapshotCensus& census) {
  std::uint64_t need = census.pause_slots * MemorySnapshot::kPageSize;
  std::lock_guard lock(mutex_);
  if (!pool_ || !arena_bytes_ || fits(arena_bytes_, need)) return;
  arena_bytes_ = with_margin(need, std::max(arena_limit_, need));
  spare_ready_ = false;
  spare_wanted_ = true;  // both arenas grow in the background (start_spare, from poll())
}

std::shared_ptr<SnapshotArena> BundleRecorder::arena() {
  if (pool_) {
    auto taken = pool_->acquire();
    // A spare for a crash that comes while this bundle is written (here or in another guest),
    // prepared in the background once the guest runs again (start_spare): the host keeps it.
    std::lock_guard lock(mutex_);
    if (taken && !spare_ready_) spare_wanted_ = true;
    release_spare_at_.reset();  // a crash: the spare stays at least until this bundle is written
    return taken;
  }
  std::lock_guard lock(mutex_);
  return own_ && own_.use_count() == 1 ? own_ : nullptr;
}

std::string BundleRecorder::arena_source() const {
  if (pool_) return "host pool " + pool_->dir();
  return "own arena (" + pool_problem_ + ")";
}

void BundleRecorder::submit(BundleJob job) {
  ++active_;
  threads_.emplace_back([this, job = std::move(job)]() mutable {
    lower_thread_priority();
    BundleResult r = write_bundle(settings_, job);
    job.capture.memory.reset();  // give the copy back before telling anyone
    std::lock_guard lock(mutex_);
    done_.push_back(std::move(r));
    --active_;
  });
}

void BundleRecorder::retry_later() {
  retry_ = true;
  retry_at_ = Clock::now() + std::chrono::seconds(1);
}

void BundleRecorder::start_spare() {
  std::lock_guard lock(mutex_);
  bool retry = retry_ && Clock::now() >= retry_at_;
  if (!(spare_wanted_ || retry) || preparing_spare_.exchange(true)) return;
  std::size_t count = spare_wanted_ || spare_ready_ ? ArenaPool::kArenas : 1;
  spare_wanted_ = retry_ = false;
  if (spare_.joinable()) spare_.join();
  spare_ = std::thread([this, bytes = arena_bytes_, limit = arena_limit_, count] {
    lower_thread_priority();
    try {
      if (!pool_->prepare(bytes, limit, count)) {
        std::lock_guard inner(mutex_);
        retry_later();
      } else if (count == ArenaPool::kArenas) {
        spare_ready_ = true;
      }
    } catch (const std::exception&) {
      // No spare: a snapshot that finds every arena taken allocates its own.
    }
    preparing_spare_ = false;
  });
}

std::vector<BundleResult> BundleRecorder::poll() {
  // The supervisor's loop calls this between crashes, never inside a guest's pause.
  start_spare();
  std::vector<BundleResult> out;
  {
    std::lock_guard lock(mutex_);
    while (!done_.empty()) {
      out.push_back(std::move(done_.front()));
      done_.pop_front();
    }
    if (pool_ && !out.empty()) release_spare_at_ = Clock::now() + kSpareHold;
    // No crash for a while, none of ours being written, the spare not being prepared: the host
    // keeps one prepared arena (another supervisor's snapshot in the spare keeps it, for now).
    if (release_spare_at_ && Clock::now() >= *release_spare_at_ && active_ == 0 && !preparing_spare_ && !spare_wanted_) {
      release_spare_at_.reset();
      try {
        pool_->keep_prepared(1);
        spare_ready_ = false;
      } catch (const std::exception&) {
      }
    }
  }
  if (active_ == 0) {
    for (auto& t : threads_) t.join();
    threads_.clear();
  }
  for (const auto& r : out)
    if (!r.path.empty()) {
      last_path_ = r.path;
      ++written_;
    }
  return out;
}

void BundleRecorder::drain(std::chrono::milliseconds timeout) {
  auto until = Clock::now() + timeout;
  while (active_ > 0 && Clock::now() < until) std::this_thread::sleep_for(std::chrono::milliseconds(20));
  if (active_ == 0) {
    for (auto& t : threads_)
      if (t.joinable()) t.join();
    threads_.clear();
  }
}

}  // namespace immortal::vmm
