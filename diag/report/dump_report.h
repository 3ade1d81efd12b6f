// What `immortal diag` tells about a dump: kernel, taint, panic message, what each CPU was
// running, tasks, modules, the kernel log and backtraces — as JSON and as text for a person.
#pragma once

#include <nlohmann/json.hpp>

#include <string>

namespace immortal {

struct DiagOptions {
  std::string dump;     // a bundle (directory or .tar.zst) or an ELF core (ours, kdump's, QEMU's)
  std::string profile;  // the healthy-guest profile directory (default: the bundle's, or the dump's own tables)
  std::string vmlinux;  // optional: a vmlinux with DWARF (types from it, source lines for frames)
  std::string modules_dir;  // optional: the modules' .ko files with DWARF (source lines for module frames)
  bool tasks = false, modules = false, dmesg = false, backtraces = false;
  bool json = false;
};

// Reads the dump and builds the report; sections not asked for are left out. Parts that could
// not be read are reported under "incomplete", never silently dropped.
nlohmann::json build_dump_report(const DiagOptions& options);
std::string render_dump_report(const nlohmann::json& report, const DiagOptions& options);

// The CLI entry (report/diag_command.cc): a bundle's report first, then what was asked of its
// vmcore; or a bare vmcore's report. Prints; returns the exit status.
int diag_command(const DiagOptions& options);

}  // namespace immortal
