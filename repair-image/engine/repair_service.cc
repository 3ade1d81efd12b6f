#include "engine/repair_service.h"

#include "base/error.h"
#include "engine/held_locks.h"
#include "engine/kernel_consistency.h"
#include "kernel/orc_unwind.h"
#include "kernel/tasks.h"

#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <future>

namespace immortal::repair {

namespace {

constexpr std::size_t kMaxKnownPatches = 4096;

}  // namespace

nlohmann::json RepairRequest::to_json() const {
  nlohmann::json patches = nlohmann::json::array();
  for (const auto& p : known_patches) patches.push_back({{"address", fmt::format("{:#x}", p.address)}, {"bytes", hex_bytes(p.bytes)}});
  nlohmann::json j = {{"record", repair::to_json(record)}, {"known_patches", patches},
                      {"quarantine", quarantine_driver ? "driver" : "function"}};
  if (text_precheck) j["text_precheck"] = text_precheck->to_json();
  if (snapshot) j["snapshot"] = repair::to_json(*snapshot);
  return j;
}

nlohmann::json to_json(const SnapshotRef& ref) {
  return {{"arena", ref.arena}, {"pages_bytes", ref.pages_bytes}, {"index_bytes", ref.index_bytes}};
}

SnapshotRef snapshot_ref_from_json(const nlohmann::json& j, const char* what) {
  auto number = [&](const char* key) -> std::uint64_t {
    auto v = j.is_object() ? j.find(key) : j.end();
    if (v == j.end() || !v->is_number_integer() || v->get<std::int64_t>() < 0)
      fail(ExitCode::bad_input, "{}: snapshot.{} is not a number of bytes", what, key);
    return v->get<std::uint64_t>();
  };
  SnapshotRef ref;
  std::uint64_t arena = number("arena");
  if (arena > 1) fail(ExitCode::bad_input, "{}: snapshot.arena {} is not 0 or 1", what, arena);
  ref.arena = static_cast<int>(arena);
  ref.pages_bytes = number("pages_bytes");
  ref.index_bytes = number("index_bytes");
  return ref;
}

RepairRequest RepairRequest::from_json(const nlohmann::json& j) {
  if (!j.is_object() || !j.contains("record")) fail(ExitCode::bad_input, "repair request: no crash record");
  RepairRequest r;
  r.record = crash_record_from_json(j["record"]);
  if (r.record.vcpu < 0) fail(ExitCode::bad_input, "repair request: the crashing vCPU is unknown");
  if (auto q = j.find("quarantine"); q != j.end()) {
    if (!q->is_string() || (*q != "driver" && *q != "function")) fail(ExitCode::bad_input, "repair request: bad quarantine");
    r.quarantine_driver = *q == "driver";
  }
  if (j.contains("known_patches")) {
    const auto& list = j["known_patches"];
    if (!list.is_array() || list.size() > kMaxKnownPatches) fail(ExitCode::bad_input, "repair request: bad known_patches");
    for (const auto& p : list) {
      if (!p.is_object() || !p.contains("address") || !p.contains("bytes"))
        fail(ExitCode::bad_input, "repair request: a malformed known patch");
      r.known_patches.push_back({parse_hex(p["address"], "a patch's address"), bytes_from_hex(p["bytes"], 64)});
    }
  }
  if (auto t = j.find("text_precheck"); t != j.end() && !t->is_null()) r.text_precheck = TextPrecheck::from_json(*t);
  if (auto s = j.find("snapshot"); s != j.end() && !s->is_null()) r.snapshot = snapshot_ref_from_json(*s, "repair request");
  return r;
}

nlohmann::json EngineResult::to_json() const {
  nlohmann::json a = analysis.to_json();
  a["integrity"] = integrity.to_json();
  a["consistency"] = consistency;
  nlohmann::json timings = {{"lock_search_ms", analysis.lock_search_ms}};
  for (const auto& [stage, ms] : stage_ms) timings[stage + "_ms"] = ms;
  return {{"analysis", a}, {"plan", plan.to_json()}, {"timings", timings}};
}

std::string rehearse_analysis(const Kernel& kernel) {
  // A sleeping user process, from where it sleeps, as the hung-task search reads one.
  int tries = 0;
  for (const TaskInfo& t : read_tasks(kernel, 256).tasks) {
    if (t.pid <= 1 || t.kernel_thread || t.state != 'S') continue;
    if (++tries > 8) break;
    try {
      std::uint64_t stack = 0;
      X86Registers r = sleeping_registers(kernel, t.address, kThreadSize, &stack);
      CrashAnalysis view;
      view.context = "process";
      view.asleep = true;
      view.task = t.address;
      view.pid = t.pid;
      view.task_stack = stack;
      view.backtrace = OrcUnwinder(kernel).unwind(r);
      view.fault_frame = 0;
      view.fault_registers = r;
      LockSearch search = find_held_locks(kernel, view);
      (void)check_kernel_consistency(kernel);
      return fmt::format("rehearsed on pid {} ({} frames, {} locks)", t.pid, view.backtrace.frames.size(), search.locks.size());
    } catch (const std::exception&) {
      continue;  // another task
    }
  }
  return "no sleeping process to rehearse on";
}

EngineResult run_repair_engine(const Kernel& kernel, const HealthyImage* healthy, const RepairRequest& request,
                               EngineOptions options) {
  const CrashRecord& record = request.record;
  EngineResult r;
  auto stage_start = std::chrono::steady_clock::now();
  auto stage_done = [&](const char* stage) {
    auto now = std::chrono::steady_clock::now();
    r.stage_ms.emplace_back(stage, std::chrono::duration<double, std::milli>(now - stage_start).count());
    stage_start = now;
  };
  // The integrity check reads only the kernel's code and the module list, and decides nothing
  // the analysis needs: with a second CPU it runs beside the analysis (in the repair VM under
  // TCG it is the longest stage after the analysis).
  auto integrity = [&]() {
    IntegrityReport report;
    try {
      if (healthy)
        report = check_text_integrity(kernel, *healthy, request.known_patches,
                                      request.text_precheck ? &*request.text_precheck : nullptr);
      else report.problems.push_back("no healthy copy of the kernel's code: integrity not checked");
    } catch (const std::exception& e) {
      report.problems.push_back(std::string("the integrity check failed: ") + e.what());
    }
    return report;
  };
  // std::async's future waits for the thread when it is destroyed, so an exception below does
  // not leave the check reading a kernel the caller is about to drop.
  std::future<std::pair<IntegrityReport, double>> beside;
  if (options.parallel_integrity)
    beside = std::async(std::launch::async, [&] {
      auto t0 = std::chrono::steady_clock::now();
      IntegrityReport report = integrity();
      return std::pair{std::move(report), std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count()};
    });
  r.analysis = analyze_crash(kernel, record);
  CrashAnalysis& a = r.analysis;
  stage_done("analysis");

  r.consistency = check_kernel_consistency(kernel);
  for (const auto& p : r.consistency) a.unsafe.push_back("kernel structures are corrupted: " + p);
  stage_done("consistency");

  if (beside.valid()) {
    // Its own duration, not the wait: the stages then add up to more than the engine's time.
    auto [report, ms] = beside.get();
    r.integrity = std::move(report);
    r.stage_ms.emplace_back("integrity", ms);
    stage_start = std::chrono::steady_clock::now();
  } else {
    r.integrity = integrity();
    stage_done("integrity");
  }
  const auto& bad = r.integrity.corrupted;
  if (!bad.empty()) {
    std::string why_not;
    if (r.integrity.truncated || bad.size() > kMaxRestoreRanges || r.integrity.corrupted_bytes() > kMaxRestoreBytes)
      why_not = fmt::format("{} corrupted bytes in {}{} places is more than a repair restores", r.integrity.corrupted_bytes(),
                            r.integrity.truncated ? "over " : "", bad.size());
    for (std::size_t v = 0; v < record.registers.size() && why_not.empty(); ++v)
      if (static_cast<int>(v) != record.vcpu)
        if (const TextDifference* d = r.integrity.corruption_at(record.registers[v].rip))
          why_not = fmt::format("CPU {} is executing the corrupted code at {}", v, d->where);
    const TextDifference* hit = a.fault_pc ? r.integrity.corruption_at(a.fault_pc) : nullptr;
    if (hit) {
      // The crash is the corruption's doing: the code, not the driver, is what failed.
      a.kind = "text-corruption";
      std::erase_if(a.unsafe, [](const std::string& u) { return u.rfind("an invalid instruction that is not a BUG()", 0) == 0; });
      a.notes.push_back(fmt::format("the faulting instruction lies in corrupted code: {} byte(s) at {} differ from the "
                                    "healthy copy ({} there, {} healthy)", hit->now.size(), hit->where, hex_bytes(hit->now),
                                    hex_bytes(hit->healthy)));
    } else {
      a.notes.push_back(fmt::format("kernel code is corrupted away from the crash: {} byte(s) in {} place(s)",
                                    r.integrity.corrupted_bytes(), bad.size()));
    }
    if (!why_not.empty()) a.unsafe.push_back("kernel code is corrupted and cannot be restored: " + why_not);
  }

  r.plan = plan_repair(kernel, record, a, PlanOptions{request.quarantine_driver});
  if (r.plan.resume && !bad.empty()) {
    RepairAction restore{"restore-code",
                         fmt::format("{} corrupted byte(s) in {} place(s) of the kernel's code are put back from the healthy "
                                     "copy", r.integrity.corrupted_bytes(), bad.size()),
                         {}, {}, {}, {}};
    nlohmann::json where = nlohmann::json::array();
    for (const auto& d : bad) {
      restore.writes.push_back({d.address, d.now, d.healthy, true});
      where.push_back(d.where);
    }
    restore.detail = {{"places", where}, {"bytes", r.integrity.corrupted_bytes()}};
    r.plan.actions.insert(r.plan.actions.begin(), std::move(restore));
    r.plan.reason = "restore-code, " + r.plan.reason;
  }
  stage_done("plan");
  return r;
}

}  // namespace immortal::repair
