#include "agent/introspect_mode.h"

#include "agent/agent_io.h"
#include "agent/sandbox.h"
#include "base/error.h"
#include "kernel/kernel.h"
#include "profile/guest_profile.h"
#include "report/kernel_json.h"

#include <unistd.h>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <cstring>
#include <string>

namespace immortal::repair {
namespace {

// Its parsed profile (symbols, BTF) and the walk's results, beyond guest RAM mapped.
constexpr std::uint64_t kIntrospectHeadroom = 2ull << 30;
constexpr std::size_t kIntrospectRequestLimit = 1 << 20;

}  // namespace

// --introspect --profile DIR: the request (JSON: part, RAM layout) on descriptor 0, the answer
// to 1, guest RAM on 3 (read-only), the doorbell on 4: 'r' once the profile is parsed and the
// kernel found; the supervisor stops the guest and rings 'w'; 'd' once the walk is done (the
// guest may run again); then the answer, and exit.
int run_introspect(int argc, char** argv) {
  std::string profile_dir;
  for (int i = 2; i + 1 < argc; i += 2)
    if (std::strcmp(argv[i], "--profile") == 0) profile_dir = argv[i + 1];
  if (profile_dir.empty()) {
    agent_say("usage: immortal-repair-agent --introspect --profile DIR  (request on 0, answer on 1, RAM on 3, doorbell on 4)");
    return 2;
  }
  try {
    // Read and mapped, not parsed, before the sandbox: the profile's files, the request (the
    // supervisor's own numbers), guest RAM.
    GuestProfile::Files files = GuestProfile::read_files(profile_dir);
    auto request = nlohmann::json::parse(read_all(0, kIntrospectRequestLimit, "the request"), nullptr, false);
    if (request.is_discarded() || !request.is_object()) fail(ExitCode::bad_input, "the request is not a JSON object");
    std::string part = request.value("part", "");
    if (part != "tasks" && part != "modules" && part != "dmesg") fail(ExitCode::bad_input, "unknown part \"{}\"", part);
    auto ram = map_request_ram(request, 3);
    ::close(0);
    ::close(3);
    enter_sandbox({address_space_in_use() + kIntrospectHeadroom, 1 << 20});
    if (!sandbox_canary_died()) return 3;

    GuestProfile profile = GuestProfile::parse(std::move(files), profile_dir);
    files.clear();
    auto kernel = Kernel::open(*ram, profile, std::nullopt);
    write_all(4, "r");
    if (doorbell_byte(4) != 'w') return 0;  // the supervisor gave up on it
    kernel->memory().forget_translations();  // the guest ran since the kernel was found
    nlohmann::json answer = part == "tasks"     ? tasks_json(*kernel)
                            : part == "modules" ? modules_json(*kernel)
                                                : kernel_log_json(*kernel);
    write_all(4, "d");
    write_all(1, answer.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace));
    return 0;
  } catch (const std::exception& e) {
    agent_say(std::string("cannot read the guest's ") + "kernel: " + e.what());
    return 1;
  }
}

}  // namespace immortal::repair
