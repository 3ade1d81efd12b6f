#include "engine/snapshot_report.h"

#include "base/error.h"
#include "dump/panic_line.h"
#include "engine/crash_analysis.h"
#include "kernel/kernel.h"
#include "kernel/orc_unwind.h"
#include "kernel/printk.h"
#include "kernel/taint.h"
#include "kernel/tasks.h"
#include "report/kernel_json.h"
#include "x86_64/page_tables.h"

#include <fmt/format.h>

#include <span>

namespace immortal::repair {

namespace {

// The snapshot as the kernel readers see it, keeping a list of what they wrote, so that the
// supervisor can make the same changes to its own copy (after checking them).
class RecordingMemory final : public PhysicalMemory {
 public:
  explicit RecordingMemory(PhysicalMemory& base) : base_(base) {}
  const std::vector<PhysicalRange>& ranges() const override { return base_.ranges(); }
  void read(std::uint64_t address, std::span<std::byte> out) const override { base_.read(address, out); }
  bool writable() const override { return base_.writable(); }
  void write(std::uint64_t address, std::span<const std::byte> data) override {
    base_.write(address, data);
    writes_.push_back({{"paddr", fmt::format("{:#x}", address)}, {"hex", to_hex(data)}});
  }
  const nlohmann::json& writes() const { return writes_; }

 private:
  static std::string to_hex(std::span<const std::byte> data) {
    std::string out;
    out.reserve(data.size() * 2);
    for (std::byte b : data) out += fmt::format("{:02x}", static_cast<unsigned>(b));
    return out;
  }
  PhysicalMemory& base_;
  nlohmann::json writes_ = nlohmann::json::array();
};

nlohmann::json report_backtrace_json(const Kernel& kernel, const X86Registers& regs) {
  std::string method;
  Backtrace bt = unwind_or_scan(kernel, regs, &method);
  nlohmann::json frames = nlohmann::json::array();
  for (const auto& f : bt.frames)
    frames.push_back({{"pc", fmt::format("{:#x}", f.pc)}, {"symbol", f.symbol}, {"reliable", f.reliable}});
  nlohmann::json out = {{"backtrace_method", method}, {"backtrace", frames}};
  if (!bt.problem.empty()) out["backtrace_problem"] = bt.problem;
  return out;
}

}  // namespace

nlohmann::json SnapshotReportRequest::to_json() const {
  return {{"record", repair::to_json(record)}, {"vmcoreinfo", vmcoreinfo}, {"victim_pid", victim_pid}, {"analyse", analyse}};
}

SnapshotReportRequest SnapshotReportRequest::from_json(const nlohmann::json& j) {
  if (!j.is_object() || !j.contains("record")) fail(ExitCode::bad_input, "a report request without a crash record");
  SnapshotReportRequest r;
  r.record = crash_record_from_json(j["record"]);
  if (j.contains("vmcoreinfo")) {
    if (!j["vmcoreinfo"].is_string()) fail(ExitCode::bad_input, "a report request's vmcoreinfo is not text");
    r.vmcoreinfo = j["vmcoreinfo"].get<std::string>();
  }
  if (j.contains("victim_pid") && j["victim_pid"].is_number_integer()) r.victim_pid = j["victim_pid"].get<std::int64_t>();
  if (j.contains("analyse") && j["analyse"].is_boolean()) r.analyse = j["analyse"].get<bool>();
  return r;
}

nlohmann::json build_snapshot_report(PhysicalMemory& snapshot, const GuestProfile& profile, const SnapshotReportRequest& request) {
  RecordingMemory memory(snapshot);
  nlohmann::json out = {{"problems", nlohmann::json::array()}, {"adjustments", nlohmann::json::array()}};
  auto problem = [&](const std::string& what) { out["problems"].push_back(what); };
  std::unique_ptr<Kernel> kernel;
  try {
    kernel = Kernel::open(memory, profile, request.vmcoreinfo.empty() ? std::nullopt : std::optional(request.vmcoreinfo));
  } catch (const std::exception& e) {
    problem(std::string("the kernel in the snapshot cannot be read: ") + e.what());
    out["writes"] = nlohmann::json::array();
    return out;
  }
  auto part = [&](const char* what, auto&& f) {
    try {
      f();
    } catch (const std::exception& e) {
      problem(fmt::format("{}: {}", what, e.what()));
    }
  };
  const CrashRecord& rec = request.record;
  const auto& registers = rec.registers;
  int crash_cpu = rec.vcpu >= 0 && static_cast<std::size_t>(rec.vcpu) < registers.size() ? rec.vcpu : -1;

  // Caught at panic()'s first instruction: panic_cpu is still -1 (a kdump vmcore is written
  // after panic() claimed it), and drgn's crashed_thread() looks for it; x86's crashing_cpu is
  // what kdump's crash path sets (drgn 0.0.22 reads it). Say which CPU it was.
  if (crash_cpu >= 0) {
    for (const char* variable : {"panic_cpu", "crashing_cpu"}) {
      try {
        if (auto sym = kernel->symbols().address_of(variable))
          if (auto pa = kernel->memory().to_physical(*sym)) {
            if (memory.read_value<std::int32_t>(*pa) == -1) {
              std::int32_t cpu = crash_cpu;
              memory.write(*pa, std::as_bytes(std::span(&cpu, 1)));
              out["adjustments"].push_back(fmt::format(
                  "{} set to {} (was -1: the crash was caught at panic()'s first instruction, before the kernel "
                  "sets it on the way to a kdump vmcore)", variable, crash_cpu));
            }
          }
      } catch (const std::exception&) {
        // Left as it was: the report says which CPU crashed anyway.
      }
    }
  }
  // Caught at panic()'s first instruction, which has printed nothing yet: the vmcore's log
  // gets the line panic() prints first, as every kdump vmcore has it.
  if (crash_cpu >= 0 && rec.caught_by == "breakpoint" && rec.intercepted_at == "panic") {
    try {
      if (panic_message(read_kernel_log(*kernel)).empty()) {
        std::string line = "Kernel panic - not syncing: " +
                           format_panic_message(*kernel, registers[static_cast<std::size_t>(crash_cpu)]);
        std::uint32_t caller = request.victim_pid > 0 && request.victim_pid < (1 << 30)
                                   ? static_cast<std::uint32_t>(request.victim_pid)
                                   : 0x80000000u | static_cast<std::uint32_t>(crash_cpu);
        std::string why;
        if (append_log_record(*kernel, memory, line, caller, &why))
          out["adjustments"].push_back("kernel log: \"" + line + "\" appended (panic() prints it first; it was "
                                       "stopped before it could)");
        else
          problem("the panic line could not be added to the vmcore's log: " + why);
      }
    } catch (const std::exception& e) {
      problem(std::string("the panic line could not be added to the vmcore's log: ") + e.what());
    }
  }

  part("taint", [&] { out["taint"] = taint_string(read_taint_mask(*kernel)); });
  part("kernel log", [&] { out["log"] = kernel_log_json(*kernel); });
  std::vector<std::uint64_t> current;
  part("current tasks", [&] { current = current_tasks(*kernel, static_cast<int>(registers.size())); });
  nlohmann::json cpus = nlohmann::json::array(), pids = nlohmann::json::array();
  for (std::size_t i = 0; i < registers.size(); ++i) {
    const auto& regs = registers[i];
    nlohmann::json cpu = {{"cpu", i}, {"rip", fmt::format("{:#x}", regs.rip)}, {"at", kernel->symbols().describe(regs.rip)}};
    int pid = 0;
    if (i < current.size()) part("task", [&] {
        TaskInfo t = read_task(*kernel, current[i]);
        cpu["task"] = task_json(t);
        pid = t.pid;
      });
    part("backtrace", [&] { cpu.update(report_backtrace_json(*kernel, regs)); });
    cpus.push_back(cpu);
    pids.push_back(pid);
  }
  out["cpus"] = cpus;
  out["pids"] = pids;
  part("kernel layout", [&] {
    const auto& l = kernel->memory().layout();
    nlohmann::json layout = {{"page_offset_base", l.page_offset_base}};
    auto text = kernel->symbols().address_of("_text"), end = kernel->symbols().address_of("_end");
    if (text && end && *end > *text && *end - *text < (1ull << 31)) {
      layout["kernel_vaddr"] = *text;
      layout["kernel_paddr"] = *text - x86_64::kStartKernelMap + l.phys_base;
      layout["kernel_size"] = (*end - *text + 0xfff) & ~0xfffull;
    }
    out["layout"] = layout;
  });
  if (request.analyse && crash_cpu >= 0)
    part("analysis", [&] { out["analysis"] = analyze_crash(*kernel, rec).to_json(); });
  out["writes"] = memory.writes();
  return out;
}

}  // namespace immortal::repair
