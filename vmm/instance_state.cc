#include "instance_state.h"

#include "base/error.h"
#include "instance.h"

#include <fcntl.h>
#include <signal.h>
#include <unistd.h>

#include <fmt/format.h>

#include <cstdio>
#include <fstream>

namespace immortal::vmm {

using nlohmann::json;

json machine_config_json(const MachineConfig& c) {
  json disks = json::array(), nets = json::array(), channels = json::array();
  for (const auto& d : c.disks) disks.push_back({{"path", d.path}, {"format", d.format}, {"read_only", d.read_only}});
  for (const auto& ch : c.channels) channels.push_back({{"name", ch.name}, {"path", ch.path}});
  for (const auto& n : c.nets) {
    json forwards = json::array();
    for (const auto& f : n.forwards)
      forwards.push_back({{"protocol", f.protocol}, {"host_address", f.host_address}, {"host_port", f.host_port},
                          {"guest_port", f.guest_port}});
    const char* kind = n.kind == NetConfig::Kind::tap ? "tap" : n.kind == NetConfig::Kind::bridge ? "bridge" : "user";
    nets.push_back({{"kind", kind}, {"host_interface", n.host_interface}, {"forwards", forwards}, {"mac", n.mac}});
  }
  return {{"name", c.name},         {"kernel", c.kernel},           {"initrd", c.initrd},
          {"append", c.append},     {"memory_bytes", c.memory_bytes}, {"vcpus", c.vcpus},
          {"accelerator", to_string(c.accelerator)}, {"runtime_dir", c.runtime_dir},
          {"console_log", c.console_log}, {"backend_options", c.backend_options},
          {"disks", disks}, {"nets", nets}, {"channels", channels}};
}

MachineConfig machine_config_from_json(const json& j) {
  MachineConfig c;
  c.name = j.at("name").get<std::string>();
  c.kernel = j.at("kernel").get<std::string>();
  c.initrd = j.at("initrd").get<std::string>();
  c.append = j.at("append").get<std::string>();
  c.memory_bytes = j.at("memory_bytes").get<std::uint64_t>();
  c.vcpus = j.at("vcpus").get<int>();
  c.accelerator = j.at("accelerator").get<std::string>() == "kvm" ? Accelerator::kvm : Accelerator::tcg;
  c.runtime_dir = j.at("runtime_dir").get<std::string>();
  c.console_log = j.at("console_log").get<std::string>();
  c.backend_options = j.value("backend_options", std::map<std::string, std::string>{});
  for (const auto& d : j.value("disks", json::array()))
    c.disks.push_back({d.at("path").get<std::string>(), d.at("format").get<std::string>(), d.at("read_only").get<bool>()});
  for (const auto& ch : j.value("channels", json::array()))
    c.channels.push_back({ch.at("name").get<std::string>(), ch.at("path").get<std::string>()});
  for (const auto& n : j.value("nets", json::array())) {
    NetConfig net;
    std::string kind = n.at("kind").get<std::string>();
    net.kind = kind == "tap" ? NetConfig::Kind::tap : kind == "bridge" ? NetConfig::Kind::bridge : NetConfig::Kind::user;
    net.host_interface = n.at("host_interface").get<std::string>();
    net.mac = n.at("mac").get<std::string>();
    for (const auto& f : n.at("forwards"))
      net.forwards.push_back({f.at("protocol").get<std::string>(), f.at("host_address").get<std::string>(),
                              f.at("host_port").get<int>(), f.at("guest_port").get<int>()});
    c.nets.push_back(std::move(net));
  }
  c.outlives_supervisor = true;
  return c;
}

json InstanceState::to_json() const {
  json points = json::array();
  for (const auto& p : armed) points.push_back({{"address", fmt::format("{:#x}", p.address)}, {"symbol", p.symbol}});
  json j = {{"format", "immortal-instance-state"},
            {"version", kVersion},
            {"settings", settings},
            {"backend", backend},
            {"machine", machine_config_json(machine)},
            {"vm", vm},
            {"supervisor_pid", supervisor_pid},
            {"boot_id", boot_id},
            {"armed", points},
            {"ledger", {{"crashes", crashes}, {"recovered", recoveries}, {"reboots", reboots}}}};
  if (last_crash) {
    const auto& c = *last_crash;
    j["ledger"]["last_crash"] = {{"crash", c.crash}, {"time", c.time}, {"summary", c.summary}, {"decision", c.decision},
                                 {"reason", c.reason}, {"outcome", c.outcome}, {"failed_check", c.failed_check},
                                 {"bundle", c.bundle}};
  }
  return j;
}

InstanceState InstanceState::from_json(const json& j) {
  if (!j.is_object() || j.value("format", "") != "immortal-instance-state")
    fail(ExitCode::bad_input, "not an immortal instance state");
  // Not value("version", 0): that converts a float like 1e300 to int (undefined behaviour).
  json v = j.value("version", json());
  if (!v.is_number_integer()) fail(ExitCode::bad_input, "the instance state has no valid format version");
  std::int64_t version = v.get<std::int64_t>();
  if (version > kVersion)
    fail(ExitCode::unsupported, "the instance state has format version {}, newer than this immortal reads ({}): "
         "attach with the newer binary", version, kVersion);
  if (version < 1) fail(ExitCode::bad_input, "the instance state has no valid format version");
  InstanceState s;
  try {
    s.settings = j.at("settings");
    s.backend = j.at("backend").get<std::string>();
    s.machine = machine_config_from_json(j.at("machine"));
    s.vm = j.at("vm");
    s.supervisor_pid = j.value("supervisor_pid", 0);
    s.boot_id = j.value("boot_id", "");
    for (const auto& p : j.at("armed")) {
      std::string text = p.at("address").get<std::string>();
      s.armed.push_back({std::stoull(text, nullptr, 16), p.at("symbol").get<std::string>()});
    }
    const auto& ledger = j.at("ledger");
    s.crashes = ledger.at("crashes").get<std::uint64_t>();
    s.recoveries = ledger.at("recovered").get<std::uint64_t>();
    s.reboots = ledger.at("reboots").get<std::uint64_t>();
    if (auto c = ledger.find("last_crash"); c != ledger.end() && c->is_object())
      s.last_crash = CrashEntry{c->at("crash").get<std::uint64_t>(), c->value("time", ""), c->value("summary", ""),
                                c->value("decision", ""), c->value("reason", ""), c->value("outcome", ""),
                                c->value("failed_check", ""), c->value("bundle", "")};
  } catch (const std::exception& e) {  // a missing or mistyped field, a bad number
    fail(ExitCode::bad_input, "the instance state is damaged: {}", e.what());
  }
  return s;
}

void InstanceState::save(const std::string& path) const {
  std::string text = to_json().dump(2, ' ', false, json::error_handler_t::replace) + "\n";
  std::string tmp = path + ".tmp";
  int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0) fail_os(ExitCode::failure, "write " + tmp, errno);
  bool ok = ::write(fd, text.data(), text.size()) == static_cast<ssize_t>(text.size()) && ::fsync(fd) == 0;
  int err = errno;
  ::close(fd);
  if (!ok) fail_os(ExitCode::failure, "write " + tmp, err);
  if (std::rename(tmp.c_str(), path.c_str()) != 0) fail_os(ExitCode::failure, "rename " + tmp, errno);
}

std::optional<InstanceState> InstanceState::load(const std::string& path) {
  std::ifstream in(path);
  if (!in) return std::nullopt;
  auto j = json::parse(in, nullptr, false);
  if (j.is_discarded()) fail(ExitCode::bad_input, "{} is not JSON (damaged instance state)", path);
  try {
    return from_json(j);
  } catch (const Error& e) {
    fail(e.code(), "{}: {}", path, e.what());
  }
}

std::optional<InstanceState> orphaned_instance(const std::string& root, const std::string& name) {
  if (instance_running(root, name)) return std::nullopt;  // it has a supervisor
  auto state = InstanceState::load(root + "/" + name + "/state.json");
  if (!state) return std::nullopt;
  int pid = state->vm.value("pid", 0);
  if (pid <= 0 || ::kill(pid, 0) != 0) return std::nullopt;
  return state;
}

}  // namespace immortal::vmm
