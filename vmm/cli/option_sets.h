// The option sets several subcommands share, so that each reads the same way everywhere:
// how a guest is protected (run, define, attach --libvirt, daemon) and what VM to boot (run, define).
#pragma once

#include "cli/commands.h"

#include <CLI/CLI.hpp>

#include <string>
#include <vector>

namespace immortal::vmm {

// Recovery, bundles, repair, events and metrics.
void add_protection_options(CLI::App* cmd, RunOptions& o);
// The VM: name, kernel, disks, networks, memory, accelerator.
void add_machine_options(CLI::App* cmd, RunOptions& o);

// The protection options given after SUBCOMMAND, for the daemon to hand to every supervisor it
// starts (CLI11 has checked them). The daemon's own options (-c/--connect, --metrics-listen,
// --no-libvirt) are left out.
std::vector<std::string> protection_arguments(int argc, char** argv, const std::string& subcommand);

}  // namespace immortal::vmm
