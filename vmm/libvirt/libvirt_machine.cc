#include "libvirt/libvirt_machine.h"

#include "base/error.h"
#include "libvirt/domain_preparation.h"
#include "libvirt/libvirt_events.h"
#include "qemu/memory_tree.h"

#include <libvirt/libvirt-qemu.h>
#include <libvirt/libvirt.h>

#include <fcntl.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <deque>
#include <fstream>
#include <thread>

namespace immortal::vmm {

using json = nlohmann::json;

namespace {


double wall_seconds() {
  timespec ts{};
  ::clock_gettime(CLOCK_REALTIME, &ts);
  return static_cast<double>(ts.tv_sec) + static_cast<double>(ts.tv_nsec) / 1e9;
}

const char* stopped_reason(int detail) {
  switch (detail) {
    case VIR_DOMAIN_EVENT_STOPPED_SHUTDOWN: return "the guest shut down";
    case VIR_DOMAIN_EVENT_STOPPED_DESTROYED: return "destroyed (virsh destroy, or its QEMU was killed)";
    case VIR_DOMAIN_EVENT_STOPPED_CRASHED: return "libvirt saw it crash";
    case VIR_DOMAIN_EVENT_STOPPED_MIGRATED: return "migrated to another host (the daemon there takes over)";
    case VIR_DOMAIN_EVENT_STOPPED_SAVED: return "saved to a file (virsh save; attached again when restored)";
    case VIR_DOMAIN_EVENT_STOPPED_FAILED: return "its QEMU failed";
    case VIR_DOMAIN_EVENT_STOPPED_FROM_SNAPSHOT: return "an offline snapshot was loaded";
    default: return "stopped";
  }
}

using Inbox = LibvirtEventInbox;
using Source = Inbox::Item::Source;

}  // namespace

json libvirt_handle(const std::string& uri, const std::string& uuid, const std::string& name) {
  return {{"uri", uri}, {"uuid", uuid}, {"domain", name}};
}

std::unique_ptr<LibvirtMachine> LibvirtMachine::attach(const MachineConfig& config, const json& handle, Deadline deadline) {
  if (!handle.is_object() || !handle.contains("uri") || !handle["uri"].is_string() || !handle.contains("uuid") ||
      !handle["uuid"].is_string())
    fail(ExitCode::bad_input, "the instance's libvirt handle is malformed: {}", handle.dump());
  std::unique_ptr<LibvirtMachine> m(new LibvirtMachine);
  m->config_ = config;
  m->handle_ = handle;
  m->inbox_ = std::make_shared<Inbox>();
  m->open_domain();
  const std::string& name = m->domain_->name();
  m->handle_["domain"] = name;
  if (!m->domain_->active())
    fail(ExitCode::failure, "libvirt domain {} is not running (start it: virsh start {})", name, name);
  if (!domain_is_prepared(m->domain_->xml(false))) {
    if (domain_is_prepared(m->domain_->xml(true)))
      fail(ExitCode::unsupported, "libvirt domain {} is prepared but runs a definition from before: restart it "
           "(virsh shutdown {}; virsh start {})", name, name, name);
    fail(ExitCode::unsupported, "libvirt domain {} is not prepared for immortal: run immortal prepare {}, then restart it",
         name, name);
  }
  if (m->connection_->uri() == kDefaultLibvirtUri) {
    std::ifstream pid_file("/run/libvirt/qemu/" + name + ".pid");  // for status displays only
    pid_file >> m->pid_;
  }
  // Before the gdbstub connects (which stops the VM): was it running, or stopped at a breakpoint
  // of a supervisor that is gone (status "debug"), or paused?
  std::string s = m->monitor("query-status").value("status", "");
  m->state_before_attach_ = s == "running"          ? RunState::running
                            : s == "guest-panicked" ? RunState::panicked
                            : s == "shutdown"       ? RunState::shutdown
                                                    : RunState::paused;
  m->map_ram();
  m->connect_gdbstub(deadline);
  return m;
}

void LibvirtMachine::open_domain() {
  connection_ = std::make_unique<LibvirtConnection>(handle_["uri"].get<std::string>(), /*with_events=*/true);
  domain_.emplace(connection_->domain(handle_["uuid"].get<std::string>()));
  virConnectPtr c = connection_->raw();
  callbacks_.push_back(watch_monitor_events(c, domain_->raw(), inbox_));
  lifecycle_callback_ = watch_lifecycle(c, domain_->raw(), inbox_);
  close_callback_ = watch_close(c, inbox_);
}

void LibvirtMachine::close_domain() {
  if (!connection_) return;
  virConnectPtr c = connection_->raw();
  for (int id : callbacks_) virConnectDomainQemuMonitorEventDeregister(c, id);
  callbacks_.clear();
  if (lifecycle_callback_ >= 0) virConnectDomainEventDeregisterAny(c, lifecycle_callback_);
  lifecycle_callback_ = -1;
  if (close_callback_) unwatch_close(c);
  close_callback_ = false;
  domain_.reset();
  connection_.reset();
}

json LibvirtMachine::monitor(const std::string& command, json arguments, std::vector<int> fds) {
  json request = {{"execute", command}};
  if (!arguments.empty()) request["arguments"] = std::move(arguments);
  char* result = nullptr;
  std::string text = request.dump();
  int rc = fds.empty() ? virDomainQemuMonitorCommand(domain_->raw(), text.c_str(), &result, 0)
                       : virDomainQemuMonitorCommandWithFiles(domain_->raw(), text.c_str(), static_cast<unsigned>(fds.size()),
                                                              fds.data(), nullptr, nullptr, &result, 0);
  if (rc < 0) fail_libvirt(fmt::format("QEMU command {} through libvirt", command));
  json reply = json::parse(result ? result : "", nullptr, false);
  std::free(result);
  if (!reply.is_object()) fail(ExitCode::qemu, "QEMU's answer to {} is not JSON", command);
  if (reply.contains("error"))
    fail(ExitCode::qemu, "QEMU refused {}: {}", command, reply["error"].is_object() ? reply["error"].value("desc", "?") : "?");
  return reply.value("return", json::object());
}

void LibvirtMachine::map_ram() {
  json memdevs = monitor("query-memdev");
  if (!memdevs.is_array() || memdevs.size() != 1)
    fail(ExitCode::unsupported, "domain {} has {} memory backends: immortal maps guest RAM from exactly one (no NUMA "
         "nodes or memory devices yet)", domain_->name(), memdevs.is_array() ? memdevs.size() : 0);
  const json& dev = memdevs[0];
  if (!dev.value("share", false) || !dev.contains("id") || !dev["id"].is_string() || !dev.contains("size") ||
      !dev["size"].is_number_unsigned())
    fail(ExitCode::unsupported, "guest RAM of {} is not in a shared memory backend (immortal prepare sets one)", domain_->name());
  std::string id = dev["id"].get<std::string>();
  ram_size_ = dev["size"].get<std::uint64_t>();
  json path = monitor("qom-get", {{"path", "/objects/" + id}, {"property", "mem-path"}});
  if (!path.is_string() || path.get<std::string>().empty() || path.get<std::string>()[0] != '/')
    fail(ExitCode::unsupported, "guest RAM of {} is not in a file (immortal prepare sets <source type='file'/>)", domain_->name());
  std::string file = path.get<std::string>();
  ram_fd_ = UniqueFd(::open(file.c_str(), O_RDWR | O_CLOEXEC | O_NOFOLLOW));
  if (!ram_fd_) fail_os(ExitCode::failure, "open the guest's RAM " + file, errno);
  struct stat st {};
  if (::fstat(ram_fd_.get(), &st) != 0 || !S_ISREG(st.st_mode) || static_cast<std::uint64_t>(st.st_size) != ram_size_)
    fail(ExitCode::qemu, "{} is not the guest's RAM ({} bytes, the backend has {})", file, st.st_size, ram_size_);
  json tree = monitor("human-monitor-command", {{"command-line", "info mtree -f"}});
  segments_ = qemu::ram_layout_from_memory_tree(tree.is_string() ? tree.get<std::string>() : "", id);
  memory_ = std::make_unique<SharedRamMemory>(ram_fd_.get(), ram_size_, segments_);
}

void LibvirtMachine::connect_gdbstub(Deadline deadline) {
  int pair[2];
  if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, pair) != 0) fail_os(ExitCode::failure, "socketpair", errno);
  UniqueFd ours(pair[0]), theirs(pair[1]);
  // A new chardev each time: `gdbserver` replaces (and deletes) the one an earlier supervisor used.
  static int serial = 0;
  std::string name = fmt::format("immortal-gdb-{}-{}", ::getpid(), ++serial);
  monitor("getfd", {{"fdname", name}}, {theirs.get()});
  theirs.reset();
  try {
    monitor("chardev-add", {{"id", name},
                            {"backend", {{"type", "socket"},
                                         {"data", {{"addr", {{"type", "fd"}, {"data", {{"str", name}}}}}, {"server", false}}}}}});
  } catch (const Error&) {
    try { monitor("closefd", {{"fdname", name}}); } catch (const Error&) {}
    throw;
  }
  json said = monitor("human-monitor-command", {{"command-line", "gdbserver chardev:" + name}});
  std::string text = said.is_string() ? said.get<std::string>() : said.dump();
  if (text.find("Waiting for gdb connection") == std::string::npos)
    fail(ExitCode::qemu, "QEMU did not start its gdbstub: {}", text);
  state_ = RunState::paused;  // the gdbstub stops the VM as it connects
  vcpus_ = std::make_unique<qemu::GdbVcpus>(std::move(ours), deadline);
  auto settle = Deadline::in(std::chrono::seconds(2));
  while (!settle.expired() && monitor("query-status").value("running", false))
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  vcpus_->client().take_stops();
  attached_at_ = wall_seconds();
  inbox_->take();
}

LibvirtMachine::~LibvirtMachine() {
  if (!released_) release();  // never terminate: the domain is libvirt's
}

void LibvirtMachine::release() {
  // The gdbstub's end closes; QEMU keeps its breakpoints, so a crash while nobody watches stops
  // the VM at its first instruction for the next supervisor (libvirt shows the domain paused).
  released_ = true;
  vcpus_.reset();
  close_domain();
}

void LibvirtMachine::resume() {
  monitor("cont");
  state_ = RunState::running;
}

void LibvirtMachine::pause() {
  monitor("stop");
  state_ = RunState::paused;
}

RunState LibvirtMachine::state() {
  if (gone_ || !domain_) return RunState::shutdown;
  std::string s;
  try {
    s = monitor("query-status").value("status", "");
  } catch (const Error&) {
    if (!domain_->active()) {
      gone_ = true;
      return state_ = RunState::shutdown;
    }
    throw;
  }
  if (s == "running") state_ = RunState::running;
  else if (s == "guest-panicked") state_ = RunState::panicked;
  else if (s == "shutdown") state_ = RunState::shutdown;
  else if (s == "prelaunch") state_ = RunState::starting;
  else state_ = RunState::paused;
  return state_;
}

void LibvirtMachine::terminate(std::chrono::milliseconds grace) {
  // Only for an explicit request (immortal stop --shutdown): libvirt's shutdown, then destroy.
  if (released_ || gone_ || !domain_) return;
  try {
    if (virDomainShutdown(domain_->raw()) == 0) {
      auto deadline = Deadline::in(grace);
      while (!deadline.expired() && domain_->active()) std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    if (domain_->active()) virDomainDestroy(domain_->raw());
  } catch (const std::exception&) {
    // Never throws: the domain is left as libvirt has it.
  }
  gone_ = true;
}

void LibvirtMachine::require_paused(const char* what) {
  // The gdbstub stops a running VM on any byte it receives; never let that happen by accident.
  if (state_ != RunState::paused && state_ != RunState::panicked)
    fail(ExitCode::failure, "{} needs the machine paused (it is {})", what, to_string(state_));
  if (!vcpus_ || vcpus_->client().closed()) fail(ExitCode::qemu, "the gdbstub of {} is gone", config_.name);
}

X86Registers LibvirtMachine::read_registers(int vcpu) {
  require_paused("reading registers");
  return vcpus_->read_registers(vcpu);
}

void LibvirtMachine::write_registers(int vcpu, const X86Registers& registers) {
  require_paused("writing registers");
  vcpus_->write_registers(vcpu, registers);
}

void LibvirtMachine::insert_breakpoint(std::uint64_t guest_virtual) {
  require_paused("setting a breakpoint");
  vcpus_->insert_breakpoint(guest_virtual);
}

void LibvirtMachine::remove_breakpoint(std::uint64_t guest_virtual) {
  require_paused("removing a breakpoint");
  vcpus_->remove_breakpoint(guest_virtual);
}

void LibvirtMachine::write_virtual(int vcpu, std::uint64_t guest_virtual, std::span<const std::uint8_t> bytes) {
  require_paused("writing guest code");
  vcpus_->write_virtual(vcpu, guest_virtual, bytes);
}

void LibvirtMachine::reset() { monitor("system_reset"); }

std::vector<int> LibvirtMachine::event_fds() const {
  std::vector<int> fds{inbox_->fd()};
  if (vcpus_ && !vcpus_->client().closed()) fds.push_back(vcpus_->client().fd());
  return fds;
}

std::vector<MachineEvent> LibvirtMachine::drain_events() {
  std::vector<MachineEvent> events;
  if (vcpus_) {
    for (const auto& stop : vcpus_->take_breakpoint_stops()) {
      state_ = RunState::paused;
      events.push_back({MachineEvent::Kind::breakpoint, stop.vcpu, stop.raw});
    }
  }
  for (auto& item : inbox_->take()) {
    if (item.source == Source::monitor) {
      // These arrive on libvirt's thread, unordered against our commands' answers: the run state
      // follows our own commands and the gdbstub's stops, never a STOP or RESUME read late.
      if (item.at < attached_at_) continue;
      if (item.name == "STOP") events.push_back({MachineEvent::Kind::paused, -1, item.name});
      else if (item.name == "RESUME") events.push_back({MachineEvent::Kind::resumed, -1, item.name});
      else if (item.name == "RESET") events.push_back({MachineEvent::Kind::reset, -1, item.data.dump()});
      else if (item.name == "GUEST_PANICKED") {
        state_ = RunState::panicked;
        events.push_back({MachineEvent::Kind::guest_panicked, -1, item.data.dump()});
      }
    } else if (item.source == Source::lifecycle && item.event == VIR_DOMAIN_EVENT_STOPPED && !gone_reported_) {
      gone_ = gone_reported_ = true;
      state_ = RunState::shutdown;
      events.push_back({item.detail == VIR_DOMAIN_EVENT_STOPPED_SHUTDOWN ? MachineEvent::Kind::shutdown : MachineEvent::Kind::vm_exited,
                        -1, fmt::format("libvirt: domain {} stopped: {}", handle_.value("domain", ""), stopped_reason(item.detail))});
    } else if (item.source == Source::closed && !gone_) {
      // libvirtd went away (a restart, an upgrade): the domain runs on. Connect again.
      std::string why;
      close_domain();
      for (int attempt = 0; attempt < 40 && !connection_; ++attempt) {
        try {
          open_domain();
        } catch (const Error& e) {
          close_domain();
          why = e.what();
          std::this_thread::sleep_for(std::chrono::milliseconds(250));
        }
      }
      if (connection_ && domain_->active()) continue;
      gone_ = gone_reported_ = true;
      state_ = RunState::shutdown;
      events.push_back({MachineEvent::Kind::vm_exited, -1,
                        connection_ ? "libvirt: the domain stopped while libvirt was away"
                                    : "lost libvirt and could not connect again (" + why + "): the domain may run on, unwatched"});
    }
  }
  if (gone_ && !gone_reported_) {
    // state() found the domain gone before libvirt's event came (or the event was lost).
    gone_reported_ = true;
    events.push_back({MachineEvent::Kind::vm_exited, -1, fmt::format("libvirt: domain {} is no longer running", handle_.value("domain", ""))});
  }
  return events;
}

void LibvirtMachine::write_native_dump(const std::string& path) {
  // libvirt's memory-only dump is QEMU's dump-guest-memory (ELF), written to a file libvirt opens.
  if (virDomainCoreDumpWithFormat(domain_->raw(), path.c_str(), VIR_DOMAIN_CORE_DUMP_FORMAT_RAW, VIR_DUMP_MEMORY_ONLY) != 0)
    fail_libvirt("dump the memory of " + domain_->name());
}

void LibvirtMachine::annotate(const json& protection) {
  if (!domain_ || gone_ || !protection.is_object()) return;
  std::string xml = "<status";
  for (const auto& [key, value] : protection.items()) {
    std::string text = value.is_string() ? value.get<std::string>() : value.dump();
    std::string escaped;
    for (char c : text) {
      if (c == '&') escaped += "&amp;";
      else if (c == '<') escaped += "&lt;";
      else if (c == '>') escaped += "&gt;";
      else if (c == '"') escaped += "&quot;";
      else escaped += c;
    }
    xml += fmt::format(" {}=\"{}\"", key, escaped);  // keys are ours (letters and '-')
  }
  xml += "/>";
  // Live only: the account is of this run, never written into the persistent definition.
  virDomainSetMetadata(domain_->raw(), VIR_DOMAIN_METADATA_ELEMENT, xml.c_str(), "immortal", kStatusNamespace,
                       VIR_DOMAIN_AFFECT_LIVE);
}

UniqueFd LibvirtMachine::connect_agent_channel(Deadline deadline) {
  std::string path = agent_channel_socket(domain_->xml(false));
  if (path.empty())
    fail(ExitCode::unsupported, "domain {} has no {} channel with a UNIX socket (immortal prepare adds it)", domain_->name(),
         kAgentChannelName);
  return connect_unix_retry(path, deadline);
}

}  // namespace immortal::vmm
