// The device options of `immortal run`, in the forms qemu and virt-install users know:
//   --disk PATH[,format=qcow2|raw][,readonly]         (a comma in PATH is written ",,")
//   --net user[,hostfwd=tcp|udp:[HOSTADDR]:HOSTPORT-:GUESTPORT]…
//   --net tap=IFNAME | --net bridge=BRIDGE
//   --channel NAME,path=FILE                           (virt-install's --channel, file-backed)
// Parsing is separate from checking the host (files, formats) so that both can be tested alone.
#pragma once

#include "machine_config.h"

#include <string>

namespace immortal::vmm {

// Syntax only; ExitCode::usage with the offending part named.
DiskConfig parse_disk_option(const std::string& spec);
NetConfig parse_net_option(const std::string& spec);
ChannelConfig parse_channel_option(const std::string& spec);

// The disk as the host has it: the path made absolute, a regular file or block device that can
// be read (and written unless read-only), its format detected when not given (a qcow2 header,
// else raw) and checked when given. ExitCode::bad_input otherwise.
void check_disk(DiskConfig& disk);
// The channel's file made absolute and created (appended to when it exists): a regular file this
// process can write. ExitCode::bad_input otherwise.
void check_channel(ChannelConfig& channel);

// A locally administered MAC in QEMU's range (52:54:00), the same for an instance name and
// interface number every time, so that a guest keeps its addresses across restarts.
std::string instance_mac(const std::string& instance, std::size_t index);

}  // namespace immortal::vmm
