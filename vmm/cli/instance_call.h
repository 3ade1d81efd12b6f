// A request to a running instance's supervisor over its control socket, for the CLI's commands.
#pragma once

#include "cli/commands.h"

#include <nlohmann/json.hpp>

#include <chrono>
#include <string>

namespace immortal::vmm {

// How long a command waits for a supervisor that is alive but busy (see status_command).
inline constexpr std::chrono::seconds kBusySupervisorWait{30};

// Throws Error(ExitCode::no_instance) when no supervisor runs the instance.
nlohmann::json call_instance(const GlobalOptions& g, const std::string& name, const nlohmann::json& request,
                             std::chrono::milliseconds timeout);

}  // namespace immortal::vmm
