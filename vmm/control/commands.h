// The control commands (docs/protocol.md), one function each, over only the parts of the
// instance each one needs. Every command answers its request exactly once, at once or later
// (exec, inject and bundle answer when the guest or the bundle writer has).
#pragma once

#include "agent_channel.h"
#include "control/control_server.h"
#include "control/live_introspection.h"
#include "guest_state.h"
#include "live_kernel.h"
#include "machine.h"
#include "recovery/crash_bundles.h"
#include "recovery/event_log.h"
#include "recovery/quarantine.h"

#include <functional>
#include <string>

namespace immortal::vmm {

using EventSink = std::function<void(const std::string& name, json fields)>;
using Say = std::function<void(const std::string&)>;

// exec ARGV: runs a command in the guest through the agent.
void exec_command(ControlRequest request, AgentChannel& agent);
// inject CLASS: checks the guest has the fault driver (or LKDTM), then starts the victim. A
// victim may crash the guest before the agent reports its pid: that is still an injection.
void inject_command(ControlRequest request, const GuestStatus& state, AgentChannel& agent, const std::string& guest,
                    const Say& say);
// introspect PART: tasks, modules or dmesg read from guest memory by a sandboxed agent (the
// guest paused meanwhile); answered when it has.
void introspect_command(ControlRequest request, LiveIntrospection& introspection);
// dump PATH: the backend's own dump of guest memory (comparisons, fallback).
void dump_command(ControlRequest request, Machine& machine);
// unquarantine FUNCTION…|--all: puts quarantined functions' bytes back.
void unquarantine_command(ControlRequest request, GuestState state, Machine& machine, LiveKernel& kernel,
                          QuarantineList& quarantine, const EventSink& event);
// bundle: a bundle of the guest as it is now; answered once it is written.
void bundle_command(ControlRequest request, GuestState state, Machine& machine, LiveKernel& kernel,
                    CrashBundles& bundles, const EventSink& event);

// Everything the commands above may be given, and the instance-wide ones (status, stop, events).
struct CommandTargets {
  std::string guest;
  GuestStatus& state;
  Machine& machine;
  AgentChannel& agent;
  LiveKernel& kernel;
  const EventLog& events;
  QuarantineList& quarantine;
  CrashBundles& bundles;
  LiveIntrospection& introspection;
  EventSink event;
  Say say;
  std::function<json()> status;
  std::function<std::string()> metrics;  // the Prometheus exposition (control/metrics.h)
  std::function<void(bool force, bool shutdown)> stop;  // shutdown: even a VM we do not own
  std::function<void(ControlRequest)> upgrade;  // answered once the hand-over is decided
};

// Routes a request to its command; a malformed field or an exception answers it with an error
// (the supervisor carries on).
void dispatch_command(ControlRequest request, CommandTargets& to);

}  // namespace immortal::vmm
