#include "agent/report_mode.h"

#include "agent/agent_io.h"
#include "agent/sandbox.h"
#include "base/budgets.h"
#include "base/error.h"
#include "dump/memory_snapshot.h"
#include "engine/snapshot_report.h"
#include "profile/guest_profile.h"

#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <cstring>
#include <string>

namespace immortal::repair {
namespace {

// Its parsed profile and the readers' work, beyond the snapshot it maps.
constexpr std::uint64_t kReportHeadroom = 2ull << 30;
constexpr std::uint64_t kReportLogLimit = 1 << 20;
constexpr std::size_t kRequestLimit = 16 << 20;

}  // namespace

// --report --profile DIR: the request on descriptor 0, the answer to 1, the snapshot's copied
// pages on 3 (read-only) and its index on 4.
int run_report(int argc, char** argv) {
  std::string profile_dir;
  for (int i = 2; i + 1 < argc; i += 2)
    if (std::strcmp(argv[i], "--profile") == 0) profile_dir = argv[i + 1];
  if (profile_dir.empty()) {
    agent_say("usage: immortal-repair-agent --report --profile DIR  (request on 0, answer on 1, snapshot on 3, index on 4)");
    return 2;
  }
  try {
    // Read, not parsed, before the sandbox: the profile's files, the request, the index, and the
    // pages mapped privately (what the readers write stays in this process).
    GuestProfile::Files files = GuestProfile::read_files(profile_dir);
    std::string request_text = read_all(0, kRequestLimit, "the request");
    std::string index = read_all(4, budget::kSnapshotPages * 4 + 4096, "the snapshot index");
    struct stat st{};
    if (::fstat(3, &st) != 0) fail_os(ExitCode::failure, "the snapshot's pages", errno);
    auto bytes = static_cast<std::uint64_t>(st.st_size);
    void* pages = bytes ? ::mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE, 3, 0) : nullptr;
    if (pages == MAP_FAILED) fail_os(ExitCode::failure, "map the snapshot's pages", errno);
    ::close(3);
    ::close(4);
    ::close(0);
    enter_sandbox({address_space_in_use() + kReportHeadroom, kReportLogLimit});
    if (!sandbox_canary_died()) return 3;

    GuestProfile profile = GuestProfile::parse(std::move(files), profile_dir);
    files.clear();
    auto snapshot = MemorySnapshot::adopt(index, static_cast<std::byte*>(pages), bytes);
    auto request_json = nlohmann::json::parse(request_text, nullptr, false);
    if (request_json.is_discarded()) fail(ExitCode::bad_input, "the request is not JSON");
    SnapshotReportRequest request = SnapshotReportRequest::from_json(request_json);
    nlohmann::json answer = build_snapshot_report(*snapshot, profile, request);
    write_all(1, answer.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace));
    return 0;
  } catch (const std::exception& e) {
    agent_say(std::string("cannot report: ") + e.what());
    return 1;
  }
}

}  // namespace immortal::repair
