// `immortal diag BUNDLE|VMCORE`: for a bundle, the one-screen summary a support engineer wants
// (what crashed, where, who, what we did) from its checked report, then — when asked — tasks,
// modules, backtraces with source lines, read again from its vmcore; for a bare vmcore, the
// dump report (symbols and types from --profile, a bundle's profile next to it, or the dump).
#include "base/error.h"
#include "base/terminal_text.h"
#include "bundle/bundle_format.h"
#include "bundle/bundle_reader.h"
#include "bundle/report_text.h"
#include "report/dump_report.h"

#include <fmt/format.h>
#include <unistd.h>

#include <filesystem>
#include <iostream>

namespace immortal {

using nlohmann::json;
namespace fs = std::filesystem;

namespace {

// Progress on stderr: a line when a long step starts and one when it ends.
void progress(const std::string& what, std::uint64_t done, std::uint64_t total) {
  if (total == 0) {
    static std::uint64_t last = 0;
    if (done - last < (256ull << 20)) return;  // unpacking: every 256 MiB
    last = done;
    std::cerr << fmt::format("immortal: {} ({} MiB so far)\n", what, done >> 20);
  } else if (done == 0) {
    std::cerr << fmt::format("immortal: {} ({} MiB)…\n", what, total >> 20);
  }
}

std::string name_of(const std::string& symbol) { return symbol.substr(0, symbol.find('+')); }

// Source line of the crash's function: the crashing CPU's frame in that function, from the
// dump report's backtraces (which have source lines when debuginfo was given).
void add_crash_source(json& report, const json& dump) {
  if (!report.contains("crash") || !report["crash"].is_object()) return;
  std::string function = bundle::text_at(report, {"crash", "function"});
  std::string cpu = bundle::text_at(report, {"crash", "cpu"});
  if (function.empty() || !dump.contains("cpus") || !dump["cpus"].is_array()) return;
  for (const auto& c : dump["cpus"]) {
    if (bundle::text_at(c, {"cpu"}) != cpu || !c.contains("backtrace") || !c["backtrace"].is_array()) continue;
    for (const auto& f : c["backtrace"])
      if (name_of(bundle::text_at(f, {"symbol"})) == name_of(function) && !bundle::text_at(f, {"source"}).empty()) {
        report["crash"]["source"] = f["source"];
        return;
      }
  }
}

// render_dump_report's sections without its header lines (the bundle's summary replaces them).
std::string sections_only(const std::string& text) {
  auto at = text.find("\n\n");
  return at == std::string::npos ? "" : text.substr(at + 1);
}

int diag_bundle(const DiagOptions& o) {
  // The vmcore's checksum is checked while it is read (two cores: about half of opening a
  // bundle was this check); nothing read from it is shown before the check passed.
  auto b = bundle::OpenedBundle::open(o.dump, progress, bundle::OpenedBundle::Verification::beside);
  json report = b.report();
  const json& m = b.manifest();
  json out = {{"bundle", {{"path", o.dump}, {"name", m.value("name", "")}, {"version", m.value("version", 0)},
                          {"created", m.value("created", "")}}}};
  bool deep = o.tasks || o.modules || o.backtraces || !o.vmlinux.empty() || !o.modules_dir.empty();
  json dump;
  DiagOptions d = o;
  if (deep) {
    if (!b.has(bundle::kVmcore)) fail(ExitCode::bad_input, "{}: the bundle has no vmcore", o.dump);
    d.dump = b.file(bundle::kVmcore);
    if (d.profile.empty() && b.has(std::string(bundle::kProfileDir) + "/profile.json")) d.profile = b.file(bundle::kProfileDir);
    d.dmesg = false;
    if (!o.vmlinux.empty() || !o.modules_dir.empty()) d.backtraces = true;
    try {
      dump = build_dump_report(d);
    } catch (...) {
      b.verified();  // a damaged vmcore is said as such, not as what its damage looked like
      throw;
    }
    add_crash_source(report, dump);
    out["dump"] = dump;
  }
  out["report"] = report;
  std::string dmesg;
  if (o.dmesg) {
    if (!b.has(bundle::kDmesg)) fail(ExitCode::bad_input, "{}: the bundle has no {}", o.dump, bundle::kDmesg);
    dmesg = bundle::read_small_file(b.file(bundle::kDmesg), 256 << 20);
    out["dmesg"] = dmesg;
  }
  b.verified();
  if (o.json) {
    std::cout << out.dump(2, ' ', false, json::error_handler_t::replace) << "\n";
    return 0;
  }
  // Guest text (comm, the log, panic messages) reaches the terminal escaped.
  std::cout << terminal_safe(bundle::render_report(report), true);
  if (deep) std::cout << terminal_safe(sections_only(render_dump_report(dump, d)), true);
  if (o.dmesg) std::cout << "\n" << terminal_safe(dmesg, true);
  return 0;
}

}  // namespace

int diag_command(const DiagOptions& options) {
  if (bundle::OpenedBundle::looks_like_bundle(options.dump)) return diag_bundle(options);
  DiagOptions o = options;
  // A vmcore inside a bundle directory: that bundle's profile describes its kernel.
  fs::path sibling = fs::path(o.dump).parent_path() / bundle::kProfileDir / "profile.json";
  std::error_code ec;
  if (o.profile.empty() && fs::exists(sibling, ec)) o.profile = sibling.parent_path().string();
  json report = build_dump_report(o);
  if (o.json) std::cout << report.dump(2, ' ', false, json::error_handler_t::replace) << "\n";
  else std::cout << terminal_safe(render_dump_report(report, o), true);
  return 0;
}

}  // namespace immortal
