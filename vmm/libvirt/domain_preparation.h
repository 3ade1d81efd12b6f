// What `immortal prepare` changes in a libvirt domain's definition so that the supervisor can
// protect it, and how `immortal unprepare` puts it back. Text in, text out (libxml2): the
// libvirt connection reads and defines the XML (libvirt_connection.h), nothing here talks to it.
//
// Prepared means:
//   <memoryBacking> <source type='file'/> <access mode='shared'/>   guest RAM in a file the host maps
//   <devices> <panic model='isa'/>                                  pvpanic: the fallback crash signal
//   <devices> <channel type='unix'> … name='org.immortal.agent.0'   the agent's virtio-serial port
//   <on_crash>preserve</on_crash>                                   libvirt keeps a crashed guest for us
// What was there before is kept in the domain's own <metadata> (namespace kMetadataNamespace),
// so that unprepare restores exactly that, whoever edited the domain in between.
#pragma once

#include <map>
#include <string>
#include <vector>

namespace immortal::vmm {

inline constexpr char kMetadataNamespace[] = "https://immortal.invalid/libvirt/prepared/1";
inline constexpr char kAgentChannelName[] = "org.immortal.agent.0";
// The running domain's account of its protection, kept up to date by its supervisor
// (LibvirtMachine::annotate): <immortal:status state=… supervisor-pid=… host=… crashes=…
// recovered=… reboots=… updated=EPOCH-SECONDS/> in the live definition's <metadata>.
inline constexpr char kStatusNamespace[] = "https://immortal.invalid/libvirt/status/1";

struct DomainEdit {
  std::string xml;                   // the new definition (the old one when nothing changes)
  std::vector<std::string> changes;  // one line per change, for the operator
  bool changed() const { return !changes.empty(); }
};

// Throws Error(ExitCode::bad_input) for XML that is not a libvirt domain, and
// Error(ExitCode::unsupported) for a domain type the supervisor cannot drive (not QEMU's).
DomainEdit prepare_domain_xml(const std::string& xml);
DomainEdit unprepare_domain_xml(const std::string& xml);
// The definition re-indented as prepare and unprepare write theirs: what a diff compares.
std::string normalized_domain_xml(const std::string& xml);
// True when the definition has everything prepare adds.
bool domain_is_prepared(const std::string& xml);
// The UNIX socket of the agent's channel in a running domain's definition ("" if it has none).
std::string agent_channel_socket(const std::string& live_xml);
// The attributes of that status element, as strings ({} when there is none).
std::map<std::string, std::string> protection_status(const std::string& live_xml);

}  // namespace immortal::vmm
