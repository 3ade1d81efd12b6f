// Budgets for everything derived from a guest: the one place that says how much of a guest's
// (possibly hostile) data the host reads, keeps or walks, and why that much. A guest's root, a
// compromised kernel or plain memory corruption controls every byte we read from it; each
// budget below is checked before allocating or looping, and a guest that exceeds one gets
// "implausible"/"too large" (ExitCode::bad_input) or a truncated result that says so — never a
// host that hangs or runs out of memory. docs/architecture.md, "Budgets", lists them with their
// reasons; change them here only.
#pragma once

#include <cstddef>
#include <cstdint>

namespace immortal::budget {

// --- Types (BTF from the guest's profile, DWARF from a vmlinux) ---
// Nesting of anonymous structs and unions searched for a member: C code nests a few deep.
inline constexpr int kMemberDepth = 16;
// Members visited for one field lookup, anonymous members included: the biggest kernel structs
// have a few hundred members; a BTF that embeds one struct in itself over and over would
// otherwise cost fan-out^depth.
inline constexpr std::size_t kMemberVisits = 10'000;

// --- The guest's profile (what the agent sends; what a repair agent loads) ---
// One file of it (kallsyms text, the vmlinux BTF): Debian's are 8 and 5 MiB.
inline constexpr std::size_t kProfileFile = 128ull << 20;
// Modules whose BTF is fetched and kept: a loaded system has 100-300 modules.
inline constexpr std::size_t kProfileModules = 2048;
// All the module BTF together: a module's is a few KiB to 1 MiB.
inline constexpr std::uint64_t kProfileModuleBtfTotal = 256ull << 20;
// The guest's /proc/modules as the agent sends it (2048 lines of ~100 bytes, with room).
inline constexpr std::size_t kProcModules = 1 << 20;

// --- Kernel structures read from guest memory ---
// A module's name: MODULE_NAME_LEN is 56 on 64-bit kernels; a BTF that says otherwise is not believed.
inline constexpr std::size_t kModuleName = 64;
// printk records kept, and their text in total: the log buffer is at most 32 MiB even with
// log_buf_len= at its maximum, and records are at least 16 bytes.
inline constexpr std::uint64_t kLogRecords = 1 << 20;
inline constexpr std::uint64_t kLogTextBytes = 32ull << 20;
// ORC unwind entries of one table, and of every table loaded for one unwinder: vmlinux has
// about a million, modules a few thousand each.
inline constexpr std::uint64_t kOrcTableEntries = 1 << 22;
inline constexpr std::uint64_t kOrcTotalEntries = 1 << 23;
// Frames of one backtrace: a 16 KiB task stack of runaway recursion with small frames holds a
// few hundred (and the unwind then crosses the exception, IRQ or double-fault stack too). The
// outermost frame of a driver (the function recovery quarantines) must not fall off the end;
// the unwinder's (ip, sp) set stops loops long before.
inline constexpr std::size_t kBacktraceFrames = 1024;
// The healthy copy of kernel and module code and read-only data kept by the host.
inline constexpr std::uint64_t kHealthyCopyTotal = 256ull << 20;

// --- Host-side resources a guest can make us spend ---
// Bundles being written at once (each holds a snapshot of the guest's kernel memory): a crash
// loop or a flood of `immortal bundle` requests waits or is refused beyond this.
inline constexpr std::size_t kBundleJobs = 2;
// Bytes taken from the agent channel per wake of the supervisor's loop: a guest that writes to
// the virtio-serial port without pause (a flood, with or without valid frames) gets its share
// and the loop goes round (control requests, the vCPUs' events) before it reads more. Each
// frame's payload is bounded by the protocol (1 MiB).
inline constexpr std::size_t kAgentBytesPerWake = 1 << 20;
// What is read back from the end of the serial console log for a message (the log itself is
// the guest's to fill: it is rotated at kConsoleLogBytes).
inline constexpr std::size_t kConsoleTail = 64 * 1024;
inline constexpr std::uint64_t kConsoleLogBytes = 64ull << 20;

// --- The report agent (a sandboxed process that reads a bundle's snapshot) ---
// A snapshot index handed to it: RAM ranges (QEMU has a handful) and pages (1 TiB of RAM).
inline constexpr std::uint64_t kSnapshotRanges = 64;
inline constexpr std::uint64_t kSnapshotPages = 1ull << 28;
// Its answer (the report's kernel parts: the log as records, every CPU's task and backtrace).
inline constexpr std::size_t kReportAnswerBytes = 64ull << 20;
// What it may change in the snapshot (the panic line in the log, panic_cpu): a few records.
inline constexpr std::size_t kReportWrites = 16;
inline constexpr std::size_t kReportWriteBytes = 64 * 1024;
// How long it may take before the bundle is written without it (killed, and said so).
inline constexpr int kReportAgentSeconds = 120;

// --- The introspection agent (`immortal ps|lsmod|dmesg`: a sandboxed process per request) ---
// Requests served at once (each is a process with the profile parsed); more are refused.
inline constexpr std::size_t kIntrospections = 2;
// Its answer (tasks, modules, or the log as records: the log's text is bounded by kLogTextBytes).
inline constexpr std::size_t kIntrospectionAnswerBytes = 64ull << 20;
// How long the guest stays paused for its walk at most, and how long a request may take in
// all (the CLI waits 30 s); beyond either it is killed and the request fails, said so.
inline constexpr int kIntrospectionPauseMs = 5000;
inline constexpr int kIntrospectionSeconds = 25;

}  // namespace immortal::budget
