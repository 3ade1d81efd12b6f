// The kernel parts of a bundle's report, read from the bundle's snapshot of a crashed (or
// hostile) guest. This walks guest structures, so it runs in the report agent, a sandboxed
// process (immortal-repair-agent --report), never in the supervisor: the supervisor hands over
// the snapshot's pages and the crash record, and takes back a bounded JSON answer that it
// checks (vmm/recovery/report_agent.h) before a byte of it reaches the bundle.
#pragma once

#include "engine/crash_record.h"
#include "memory/physical_memory.h"
#include "profile/guest_profile.h"

#include <nlohmann/json.hpp>

#include <cstdint>
#include <string>

namespace immortal::repair {

struct SnapshotReportRequest {
  CrashRecord record;           // every vCPU's registers; vcpu and caught_by when a crash
  std::string vmcoreinfo;       // the note's text, as the guest had it ("" if unknown)
  std::int64_t victim_pid = -1; // the task the recovery path blamed (-1: not known)
  bool analyse = false;         // no analysis came from the recovery path (recovery off): make one
  nlohmann::json to_json() const;
  // Throws Error(ExitCode::bad_input) for a malformed request.
  static SnapshotReportRequest from_json(const nlohmann::json& j);
};

// The answer (docs/protocol.md, "Report agent"):
//   taint, log {records, panic_message}, cpus [{cpu, rip, at, task, backtrace...}], pids [per
//   CPU], layout {page_offset_base, kernel_vaddr, kernel_paddr, kernel_size}, writes [{paddr,
//   hex}] (changes to make to the snapshot: the panic line panic() had no time to print,
//   panic_cpu), adjustments [why each write], problems [what could not be read], analysis.
// snapshot is changed by the writes it reports (the agent maps it privately).
nlohmann::json build_snapshot_report(PhysicalMemory& snapshot, const GuestProfile& profile,
                                     const SnapshotReportRequest& request);

}  // namespace immortal::repair
