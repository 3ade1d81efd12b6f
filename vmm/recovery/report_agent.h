// The kernel parts of a bundle's report come from the report agent: immortal-repair-agent
// --report, a sandboxed process that reads the bundle's snapshot (repair-image/engine/
// snapshot_report.h). The supervisor only hands over bytes (the snapshot's pages and index, the
// crash record, the profile's directory) and checks what comes back before a byte of it is used:
// its size and depth, every field's type and range, and the changes it asks for in the snapshot
// (only copied pages, few and small). Nothing of a crashed guest is parsed here.
#pragma once

#include "dump/memory_snapshot.h"
#include "dump/vmcore_writer.h"

#include <nlohmann/json.hpp>

#include <chrono>
#include <string>
#include <string_view>
#include <vector>

namespace immortal::vmm {

struct ReportParts {
  nlohmann::json taint;     // a string, or null
  nlohmann::json log;       // {records, panic_message}, or null
  std::string dmesg;        // the log's records as dmesg prints them
  nlohmann::json cpus = nlohmann::json::array();  // per vCPU: rip, at, task, backtrace
  std::vector<int> pids;    // per vCPU: the task running there (0: idle or unknown)
  VmcoreLayout layout;      // all zero when unknown
  nlohmann::json analysis;  // when asked for (recovery off), or null
  std::vector<std::string> adjustments;  // changes made to the snapshot, and why
  std::vector<std::string> problems;     // what could not be read, and why
};

// Checks an answer of the report agent for a snapshot of `vcpus` vCPUs and makes the changes it
// asks for in the snapshot (all or none). Never throws for a bad answer: what does not pass is
// left out and said in problems.
ReportParts accept_report_answer(std::string_view answer, MemorySnapshot& snapshot, std::size_t vcpus);

// Runs the report agent (the immortal-repair-agent binary `agent`) on snapshot with the profile
// in profile_dir and request (repair::SnapshotReportRequest as JSON), for at most timeout; then
// accept_report_answer. An agent that fails, dies or overruns is killed and said in problems.
ReportParts read_report_parts(const std::string& agent, MemorySnapshot& snapshot, const std::string& profile_dir,
                              const nlohmann::json& request, std::chrono::seconds timeout);

}  // namespace immortal::vmm
