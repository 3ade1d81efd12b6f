// A repair agent's answer as the supervisor takes it: produced from a crashed, possibly hostile
// guest's memory by an agent that may itself be subverted, so every field is checked for its
// type and range before it is used (fuzzed: tests/fuzz/repair_answer_fuzz.cc).
#include "repair/repair_engine.h"

#include "base/error.h"

#include <fmt/format.h>

#include <cmath>
#include <limits>

namespace immortal::vmm {

namespace {

// A finite, non-negative number of milliseconds below a day; nullopt for anything else.
std::optional<double> milliseconds(const nlohmann::json& j, const char* key) {
  auto v = j.find(key);
  if (v == j.end() || !v->is_number()) return std::nullopt;
  double ms = v->get<double>();
  if (!std::isfinite(ms) || ms < 0 || ms > 86'400'000) return std::nullopt;
  return ms;
}

// An integer field within [-1, INT_MAX]: `otherwise` when absent; Error when anything else.
int int_field(const nlohmann::json& j, const char* key, int otherwise) {
  auto v = j.find(key);
  if (v == j.end()) return otherwise;
  if (!v->is_number_integer() || v->get<std::int64_t>() < -1 || v->get<std::int64_t>() > std::numeric_limits<int>::max())
    fail(ExitCode::bad_input, "{} is not a small integer", key);
  return static_cast<int>(v->get<std::int64_t>());
}

std::string text_or(const nlohmann::json& j, const char* key, std::string otherwise) {
  auto v = j.find(key);
  return v != j.end() && v->is_string() ? v->get<std::string>() : std::move(otherwise);
}

}  // namespace

nlohmann::json RepairAnswer::to_json() const {
  nlohmann::json j = {{"ok", ok}, {"mode", mode}, {"engine_ms", engine_ms}, {"round_trip_ms", round_trip_ms},
                      {"lock_search_ms", lock_search_ms}};
  if (!stage_ms.empty()) j["stage_ms"] = stage_ms;
  if (!error.empty()) j["error"] = error;
  if (!fallbacks.empty()) j["fallbacks"] = fallbacks;
  if (!cross_check.is_null()) j["cross_check"] = cross_check;
  if (process_pid > 0)
    j["process"] = {{"pid", process_pid}, {"per_crash", per_crash_process}, {"fork_ms", process_fork_ms},
                    {"page_faults", process_page_faults}};
  if (!memory_read.empty()) {
    j["memory"] = {{"read", memory_read}};
    if (memory_read == "snapshot")
      j["memory"].update({{"arena", snapshot_arena}, {"pages", snapshot_pages}, {"code_pages_from_healthy_copy", snapshot_code_pages},
                          {"code_reads", snapshot_code_reads}, {"code_read_ms", snapshot_code_read_ms}, {"map_ms", snapshot_map_ms}});
  }
  return j;
}

bool read_repair_answer(const std::string& text, const std::string& mode, RepairAnswer& out) {
  auto j = nlohmann::json::parse(text, nullptr, false);
  out.mode = mode;
  if (j.is_discarded() || !j.is_object()) {
    out.fallbacks.push_back(mode + ": its answer is not JSON");
    return false;
  }
  if (auto ms = milliseconds(j, "engine_ms")) out.engine_ms = *ms;
  if (auto p = j.find("process"); p != j.end() && p->is_object()) {
    auto pid = p->find("pid");
    if (pid != p->end() && pid->is_number_integer() && pid->get<std::int64_t>() > 0 && pid->get<std::int64_t>() <= (1 << 22)) {
      out.process_pid = pid->get<std::int64_t>();
      auto per_crash = p->find("per_crash");
      out.per_crash_process = per_crash != p->end() && per_crash->is_boolean() && per_crash->get<bool>();
      if (auto ms = milliseconds(*p, "fork_ms")) out.process_fork_ms = *ms;
      if (auto f = p->find("page_faults"); f != p->end() && f->is_number_unsigned())
        out.process_page_faults = std::min<std::uint64_t>(f->get<std::uint64_t>(), std::uint64_t{1} << 40);
    }
  }
  // What the engine read the crash from (as it says: untrusted, so only known values).
  if (auto m = j.find("memory"); m != j.end() && m->is_object()) {
    std::string read = text_or(*m, "read", "");
    if (read == "guest RAM" || read == "snapshot") out.memory_read = read;
    auto count = [&](const char* key) -> std::uint64_t {
      auto v = m->find(key);
      return v != m->end() && v->is_number_unsigned() ? v->get<std::uint64_t>() : 0;
    };
    if (read == "snapshot") {
      std::uint64_t arena = count("arena");
      out.snapshot_arena = arena <= 1 ? static_cast<int>(arena) : -1;
      out.snapshot_pages = count("pages");
      out.snapshot_code_pages = count("code_pages_from_healthy_copy");
      out.snapshot_code_reads = count("code_reads");
      if (auto ms = milliseconds(*m, "map_ms")) out.snapshot_map_ms = *ms;
      if (auto ms = milliseconds(*m, "code_read_ms")) out.snapshot_code_read_ms = *ms;
    }
  }
  if (auto t = j.find("timings"); t != j.end() && t->is_object()) {
    if (auto ls = milliseconds(*t, "lock_search_ms")) out.lock_search_ms = *ls;
    for (const char* stage : {"module_symbols", "analysis", "consistency", "integrity", "plan"})
      if (auto ms = milliseconds(*t, (std::string(stage) + "_ms").c_str())) out.stage_ms[stage] = *ms;
  }
  auto ok = j.find("ok");
  if (ok == j.end() || !ok->is_boolean()) {
    out.fallbacks.push_back(mode + ": its answer says neither ok nor not ok");
    return false;
  }
  if (!ok->get<bool>()) {
    // The engine itself gave up (e.g. the crashed kernel cannot be opened): an answer, not a fault.
    out.ok = false;
    out.error = text_or(j, "error", "the repair engine failed without saying why");
    return true;
  }
  if (!j.contains("analysis") || !j["analysis"].is_object() || !j.contains("plan") || !j["plan"].is_object()) {
    out.fallbacks.push_back(mode + ": its answer lacks the analysis or the plan");
    return false;
  }
  try {
    const auto& a = j["analysis"];
    out.plan = repair::plan_from_json(j["plan"]);
    out.facts.cpu = int_field(a, "cpu", -1);
    out.facts.kind = a.value("kind", "");
    out.facts.summary = a.value("summary", "");
    out.facts.module = a.value("module", "");
    out.facts.percpu_base = repair::parse_hex(a.value("percpu_base", nlohmann::json("0x0")), "percpu_base");
    const auto task = a.value("task", nlohmann::json::object());
    if (task.is_object()) {
      out.facts.task = repair::parse_hex(task.value("address", nlohmann::json("0x0")), "task");
      out.facts.task_pid = int_field(task, "pid", -1);
    }
    out.facts.module_layout = plausible_module_layout(a);
  } catch (const std::exception& e) {
    // Error from the plan's parser, or a field of the wrong type (nlohmann's exceptions).
    out.fallbacks.push_back(mode + ": its answer is malformed: " + e.what());
    return false;
  }
  out.ok = true;
  out.analysis = std::move(j["analysis"]);
  return true;
}

std::optional<repair::ModuleLayout> plausible_module_layout(const nlohmann::json& analysis) {
  // x86-64's module area (MODULES_VADDR to MODULES_END): module text and data live nowhere else.
  constexpr std::uint64_t kModulesStart = 0xffffffffc0000000ull, kModulesEnd = 0xffffffffff000000ull;
  auto inside = [&](std::uint64_t begin, std::uint64_t end) {
    return begin >= kModulesStart && end >= begin && end <= kModulesEnd;
  };
  auto j = analysis.find("module_layout");
  if (j == analysis.end() || j->is_null()) return std::nullopt;
  try {
    repair::ModuleLayout l = repair::module_layout_from_json(*j);
    if (l.name.empty() || l.name != analysis.value("module", "")) return std::nullopt;
    if (l.size > kModulesEnd - kModulesStart || l.text_size > l.size || !inside(l.base, l.base + l.size)) return std::nullopt;
    for (const auto& r : l.data)
      if (!inside(r.begin, r.end)) return std::nullopt;
    return l;
  } catch (const std::exception&) {
    return std::nullopt;  // Error or a field of the wrong type: as if it had said nothing
  }
}

}  // namespace immortal::vmm
