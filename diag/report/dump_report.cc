#include "report/dump_report.h"

#include "kernel/kernel_support.h"

#include "base/error.h"
#include "kernel/backtrace.h"
#include "kernel/kernel.h"
#include "kernel/modules.h"
#include "kernel/orc_unwind.h"
#include "kernel/printk.h"
#include "kernel/taint.h"
#include "kernel/tasks.h"
#include "memory/elf_core.h"
#include "profile/guest_profile.h"
#include "profile/profile_from_memory.h"
#include "report/kernel_json.h"
#include "types/dwarf_types.h"
#include "types/module_debuginfo.h"

#include <fmt/format.h>

#include <iostream>

namespace immortal {

using nlohmann::json;

namespace {

// Runs one part of the report; a failure is recorded, not fatal.
template <typename F>
void section(json& report, const char* name, F&& f) {
  try {
    f();
  } catch (const MemoryFault& e) {
    report["incomplete"].push_back({{"part", name}, {"reason", e.what()}});
  } catch (const Error& e) {
    report["incomplete"].push_back({{"part", name}, {"reason", e.what()}});
  }
}

}  // namespace

json build_dump_report(const DiagOptions& o) {
  auto core = ElfCoreMemory::open(o.dump);
  // Symbols and types: the healthy-guest profile if given, else the kernel's own tables in the
  // dump (kallsyms and BTF, located through VMCOREINFO).
  bool from_memory = o.profile.empty();
  if (from_memory && !core->vmcoreinfo())
    fail(ExitCode::bad_input, "{} has no VMCOREINFO note: give the healthy-guest profile with --profile", o.dump);
  GuestProfile profile = from_memory ? profile_from_memory(*core, Vmcoreinfo::parse(*core->vmcoreinfo()))
                                     : GuestProfile::load(o.profile);
  // With a debug vmlinux, DWARF describes the types and maps code to source lines.
  const DwarfTypes* dwarf = nullptr;
  std::unique_ptr<TypeInfo> types;
  if (!o.vmlinux.empty()) {
    auto d = DwarfTypes::open(o.vmlinux);
    dwarf = d.get();
    types = std::move(d);
  }
  auto kernel = Kernel::open(*core, profile, core->vmcoreinfo(), std::move(types));
  // With a modules directory, the .ko files' DWARF maps module code to source lines.
  std::optional<ModuleDebugInfo> module_debug;
  if (!o.modules_dir.empty()) module_debug.emplace(o.modules_dir);
  std::uint64_t kaslr = kernel->memory().layout().kaslr_offset;

  json report = {{"dump", o.dump},
                 {"kernel_release", kernel->release()},
                 {"incomplete", json::array()},
                 {"warnings", kernel->warnings()},
                 {"memory", {{"bytes", core->total_size()}, {"missing_ranges", core->missing().size()}}}};
  if (!core->vmcoreinfo()) report["warnings"].push_back("the dump has no VMCOREINFO note");
  // What of this kernel release the readers understand; what they do not is said, not guessed.
  KernelSupport support = check_kernel_support(*kernel);
  report["kernel_support"] = support.summary();
  for (const auto& m : support.missing()) report["warnings"].push_back("not understood in this kernel: " + m);
  report["symbols_from"] = from_memory ? "the dump's own kallsyms and BTF" : "profile " + o.profile;

  section(report, "taint", [&] { report["taint"] = taint_string(read_taint_mask(*kernel)); });

  section(report, "dmesg", [&] {
    json log = kernel_log_json(*kernel);
    report["panic_message"] = log["panic_message"];
    if (o.dmesg) {
      report["dmesg"] = log["records"];
      report["dmesg_skipped"] = log["skipped"];
    }
  });

  section(report, "cpus", [&] {
    json cpus = json::array();
    auto current = current_tasks(*kernel, static_cast<int>(core->cpus().size()));
    std::vector<ModuleInfo> loaded;
    if (module_debug && o.backtraces)
      section(report, "module source lines", [&] { loaded = read_modules(*kernel).modules; });
    for (std::size_t i = 0; i < core->cpus().size(); ++i) {
      const auto& regs = core->cpus()[i].registers;
      json cpu = {{"cpu", i}, {"rip", fmt::format("{:#x}", regs.rip)}, {"at", kernel->symbols().describe(regs.rip)}};
      section(cpu, "current task", [&] { cpu["task"] = task_json(read_task(*kernel, current.at(i))); });
      if (o.backtraces) {
        // The kernel's own unwind data first; a stack scan (unverified frames) when it has none.
        std::string method;
        Backtrace bt = unwind_or_scan(*kernel, regs, &method);
        cpu["backtrace_method"] = method;
        json frames = json::array();
        for (const auto& f : bt.frames) {
          json frame = {{"pc", fmt::format("{:#x}", f.pc)}, {"symbol", f.symbol}, {"reliable", f.reliable}};
          // vmlinux addresses are link-time: the running kernel is shifted by its KASLR offset.
          // A return address belongs to the call before it, hence pc - 1 for all but the first frame.
          if (dwarf && f.pc >= 0xffffffff80000000ull && f.pc < 0xffffffffc0000000ull)
            if (auto line = dwarf->source_line(f.pc - kaslr - (frames.empty() || f.regs ? 0 : 1))) frame["source"] = *line;
          // (A pc saved by an exception or interrupt, f.regs, is where the code stood, not a return address.)
          for (const auto& m : loaded)
            if (m.contains_text(f.pc))
              if (auto line = module_debug->source_line(*kernel, m, f.pc - (frames.empty() || f.regs ? 0 : 1)))
                frame["source"] = *line;
          frames.push_back(frame);
        }
        cpu["backtrace"] = frames;
        if (!bt.problem.empty()) cpu["backtrace_problem"] = bt.problem;
      }
      cpus.push_back(cpu);
    }
    report["cpus"] = cpus;
  });

  for (const char* part : {"tasks", "modules"}) {
    section(report, part, [&] {
      bool tasks = std::string(part) == "tasks";
      json list = tasks ? tasks_json(*kernel) : modules_json(*kernel);
      report[tasks ? "task_count" : "module_count"] = list[part].size();
      if (!list.value("complete", true)) report["incomplete"].push_back({{"part", part}, {"reason", list["problem"]}});
      if (tasks ? o.tasks : o.modules) report[part] = list[part];
    });
  }
  return report;
}

std::string render_dump_report(const json& r, const DiagOptions& o) {
  std::string out;
  auto line = [&](const std::string& key, const std::string& value) { out += fmt::format("{:<10}{}\n", key, value); };
  line("Dump:", r.value("dump", ""));
  line("Kernel:", r.value("kernel_release", "?") + "   taint: " + r.value("taint", "?"));
  std::string panic = r.value("panic_message", "");
  line("Panic:", panic.empty() ? "(none in the log)" : panic);
  for (const auto& cpu : r.value("cpus", json::array())) {
    std::string who = cpu.contains("task")
                          ? fmt::format("{} (pid {})", cpu["task"].value("comm", "?"), cpu["task"].value("pid", 0))
                          : "?";
    line(fmt::format("CPU {}:", cpu.value("cpu", 0)), fmt::format("{} at {}", who, cpu.value("at", "?")));
  }
  line("Tasks:", std::to_string(r.value("task_count", 0)) + "   modules: " + std::to_string(r.value("module_count", 0)));
  for (const auto& w : r.value("warnings", json::array())) line("Warning:", w.get<std::string>());
  for (const auto& i : r.value("incomplete", json::array()))
    line("Missing:", i.value("part", "") + ": " + i.value("reason", ""));

  if (o.backtraces) {
    for (const auto& cpu : r.value("cpus", json::array())) {
      out += fmt::format("\nBacktrace of CPU {} ({}{}):\n", cpu.value("cpu", 0), cpu.value("backtrace_method", "?"),
                         cpu.value("backtrace_method", "").rfind("stack scan", 0) == 0 ? "; '?' entries are unverified" : "");
      for (const auto& f : cpu.value("backtrace", json::array()))
        out += fmt::format("  {}{}{}\n", f.value("reliable", false) ? "" : "? ", f.value("symbol", ""),
                           f.contains("source") ? "  " + f["source"].get<std::string>() : "");
      if (cpu.contains("backtrace_problem")) out += "  (" + cpu["backtrace_problem"].get<std::string>() + ")\n";
    }
  }
  if (o.tasks) out += "\n" + render_tasks(r.value("tasks", json::array()));
  if (o.modules) out += "\n" + render_modules(r.value("modules", json::array()));
  if (o.dmesg) out += "\n" + render_kernel_log(r.value("dmesg", json::array()));
  return out;
}



}  // namespace immortal
