#include "bundle/report_text.h"

#include <fmt/format.h>

namespace immortal::bundle {

using nlohmann::json;

namespace {

const json* at(const json& j, std::initializer_list<const char*> path) {
  const json* cur = &j;
  for (const char* key : path) {
    if (!cur->is_object()) return nullptr;
    auto it = cur->find(key);
    if (it == cur->end()) return nullptr;
    cur = &*it;
  }
  return cur;
}

std::string as_text(const json& v) {
  if (v.is_string()) return v.get<std::string>();
  if (v.is_number_integer() || v.is_number_unsigned()) return v.dump();
  if (v.is_number_float()) return fmt::format("{:.1f}", v.get<double>());
  if (v.is_boolean()) return v.get<bool>() ? "yes" : "no";
  return "";
}

std::string or_q(const std::string& s) { return s.empty() ? "?" : s; }

std::string mib(const json* v) {
  if (!v || !v->is_number()) return "?";
  return fmt::format("{:.1f} MiB", v->get<double>() / (1024.0 * 1024.0));
}

}  // namespace

std::string text_at(const json& j, std::initializer_list<const char*> path) {
  const json* v = at(j, path);
  return v ? as_text(*v) : "";
}

std::string render_report(const json& r) {
  std::string out;
  auto line = [&](const std::string& key, const std::string& value) {
    if (!value.empty()) out += fmt::format("{:<11}{}\n", key, value);
  };
  std::string reason = text_at(r, {"reason"});
  line("Bundle:", fmt::format("{}   guest {}   {}", or_q(text_at(r, {"bundle"})), or_q(text_at(r, {"guest"})),
                              reason == "on-demand" ? "taken on demand (no crash)" : "crash " + or_q(text_at(r, {"crash", "id"}))));
  line("Kernel:", fmt::format("{}   taint: {}", or_q(text_at(r, {"kernel", "release"})), or_q(text_at(r, {"kernel", "taint"}))));
  if (reason != "on-demand") {
    line("When:", fmt::format("{} (caught by {}{})", or_q(text_at(r, {"crash", "time"})), or_q(text_at(r, {"crash", "caught_by"})),
                              text_at(r, {"crash", "intercepted_at"}).empty() ? "" : " at " + text_at(r, {"crash", "intercepted_at"})));
    line("What:", fmt::format("{} in {} context on CPU {}", or_q(text_at(r, {"crash", "kind"})), or_q(text_at(r, {"crash", "context"})),
                              or_q(text_at(r, {"crash", "cpu"}))));
    line("Message:", text_at(r, {"crash", "oops"}).empty() ? text_at(r, {"crash", "message"}) : text_at(r, {"crash", "oops"}));
    std::string where = text_at(r, {"crash", "function"});
    if (!text_at(r, {"crash", "source"}).empty()) where += "  (" + text_at(r, {"crash", "source"}) + ")";
    line("Where:", where);
    std::string module = text_at(r, {"crash", "module"});
    std::string entry = text_at(r, {"crash", "entry"});
    if (!module.empty())
      line("Driver:", module + (entry.empty() ? "" : ", entered at " + entry) +
                          (text_at(r, {"crash", "entry_caller"}).empty() ? "" : " from " + text_at(r, {"crash", "entry_caller"})));
    std::string pid = text_at(r, {"crash", "task", "pid"});
    line("Task:", pid.empty() || pid == "-1" ? "?" : fmt::format("{} (pid {})", or_q(text_at(r, {"crash", "task", "comm"})), pid));
    std::string decision = text_at(r, {"recovery", "decision"});
    line("Recovery:", fmt::format("{}{} — outcome: {}", or_q(decision),
                                  text_at(r, {"recovery", "reason"}).empty() ? "" : " (" + text_at(r, {"recovery", "reason"}) + ")",
                                  or_q(text_at(r, {"recovery", "outcome"}))));
    if (const json* actions = at(r, {"recovery", "actions"}); actions && actions->is_array())
      for (const auto& a : *actions)
        line("  action:", fmt::format("{}: {}", or_q(text_at(a, {"action"})), text_at(a, {"reason"})));
    if (const json* locks = at(r, {"crash", "locks_held"}); locks && locks->is_array() && !locks->empty())
      for (const auto& l : *locks)
        line("  lock:", fmt::format("{} {} held{}", text_at(l, {"kind"}), text_at(l, {"symbol"}),
                                    text_at(l, {"note"}).empty() ? "" : " (" + text_at(l, {"note"}) + ")"));
    if (const json* hung = at(r, {"crash", "hung_tasks"}); hung && hung->is_array())
      for (const auto& h : *hung)
        line("  hung:", fmt::format("{} (pid {}): {}{}", or_q(text_at(h, {"comm"})), or_q(text_at(h, {"pid"})),
                                    or_q(text_at(h, {"role"})),
                                    !text_at(h, {"sleeps_in"}).empty() ? ", asleep in " + text_at(h, {"sleeps_in"})
                                    : !text_at(h, {"waits_on"}).empty() ? ", on " + text_at(h, {"waits_on"}) : ""));
  }
  std::string timing;
  for (auto [key, label] : {std::pair{"snapshot_pause_ms", "memory copied in"}, std::pair{"guest_paused_ms", "guest paused"},
                            std::pair{"intercept_to_resume_ms", "crash to resume"}, std::pair{"verify_ms", "verified"},
                            std::pair{"write_ms", "bundle written"}}) {
    std::string v = text_at(r, {"timings", key});
    if (!v.empty()) timing += fmt::format("{}{} {} ms", timing.empty() ? "" : ", ", label, v);
  }
  line("Timings:", timing);
  const json* pages = at(r, {"memory", "pages"});
  if (pages && pages->is_object())
    line("Memory:", fmt::format("{} RAM, {} in the vmcore; left out: free {}, user {}, cache {}, zero {} pages",
                                mib(at(r, {"memory", "ram_bytes"})), mib(at(r, {"vmcore", "bytes"})), text_at(*pages, {"free"}),
                                text_at(*pages, {"user"}), text_at(*pages, {"cache"}), text_at(*pages, {"zero"})));

  if (const json* cpus = at(r, {"cpus"}); cpus && cpus->is_array()) {
    out += "\n";
    for (const auto& c : *cpus) {
      std::string task = text_at(c, {"task", "comm"}).empty()
                             ? "?"
                             : fmt::format("{} (pid {})", text_at(c, {"task", "comm"}), text_at(c, {"task", "pid"}));
      out += fmt::format("CPU {:<3} {:<28} at {}\n", or_q(text_at(c, {"cpu"})), task, or_q(text_at(c, {"at"})));
    }
    std::string crashing = text_at(r, {"crash", "cpu"});
    for (const auto& c : *cpus) {
      if (text_at(c, {"cpu"}) != crashing) continue;
      const json* frames = at(c, {"backtrace"});
      if (!frames || !frames->is_array()) continue;
      out += fmt::format("\nBacktrace of CPU {} (the crash):\n", crashing);
      for (const auto& f : *frames) {
        std::string src = text_at(f, {"source"});
        out += fmt::format("  {}{}{}\n", f.is_object() && f.value("reliable", true) ? "" : "? ", or_q(text_at(f, {"symbol"})),
                           src.empty() ? "" : "  " + src);
      }
    }
  }
  if (const json* problems = at(r, {"problems"}); problems && problems->is_array())
    for (const auto& p : *problems) line("Note:", as_text(p));
  return out;
}

}  // namespace immortal::bundle
