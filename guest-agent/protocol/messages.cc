#include "protocol/messages.h"

#include "protocol/base64.h"

#include <nlohmann/json.hpp>

#include <limits>

namespace immortal::agent {

using nlohmann::json;

namespace {

json parse_object(const std::string& payload) {
  json j = json::parse(payload, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) throw ProtocolError("payload is not valid JSON");
  if (!j.is_object()) throw ProtocolError("payload is not a JSON object");
  return j;
}

const json& field(const json& j, const char* name) {
  auto it = j.find(name);
  if (it == j.end()) throw ProtocolError(std::string("missing field \"") + name + "\"");
  return *it;
}

std::uint64_t get_u64(const json& j, const char* name) {
  const json& v = field(j, name);
  if (!v.is_number_unsigned() && !(v.is_number_integer() && v.get<std::int64_t>() >= 0))
    throw ProtocolError(std::string("field \"") + name + "\" is not an unsigned integer");
  return v.get<std::uint64_t>();
}

// An unsigned field within [min, max], as a u32.
std::uint32_t get_u32_in(const json& j, const char* name, std::uint64_t min, std::uint64_t max) {
  auto v = get_u64(j, name);
  if (v < min || v > max) throw ProtocolError(std::string("field \"") + name + "\" is out of range");
  return static_cast<std::uint32_t>(v);
}

int get_int(const json& v, const char* name) {
  if (!v.is_number_integer()) throw ProtocolError(std::string("field \"") + name + "\" is not an integer");
  auto x = v.get<std::int64_t>();
  if (x < std::numeric_limits<int>::min() || x > std::numeric_limits<int>::max())
    throw ProtocolError(std::string("field \"") + name + "\" is out of range");
  return static_cast<int>(x);
}

std::string get_string(const json& j, const char* name, std::size_t max = kMaxText) {
  const json& v = field(j, name);
  if (!v.is_string()) throw ProtocolError(std::string("field \"") + name + "\" is not a string");
  const auto& s = v.get_ref<const std::string&>();
  if (s.size() > max) throw ProtocolError(std::string("field \"") + name + "\" is too long");
  return s;
}

std::string get_base64(const json& j, const char* name, std::size_t max) {
  auto text = get_string(j, name, (max + 2) / 3 * 4);
  auto bytes = base64_decode(text);
  if (!bytes) throw ProtocolError(std::string("field \"") + name + "\" is not base64");
  return *bytes;
}

std::vector<std::string> get_argv(const json& j) {
  const json& argv = field(j, "argv");
  if (!argv.is_array() || argv.empty() || argv.size() > kMaxArgs)
    throw ProtocolError("field \"argv\" must be an array of 1 to 256 strings");
  std::vector<std::string> out;
  for (const auto& a : argv) {
    if (!a.is_string() || a.get_ref<const std::string&>().size() > kMaxText)
      throw ProtocolError("field \"argv\" holds a non-string or too long argument (at most 4096 bytes each)");
    out.push_back(a.get<std::string>());
  }
  return out;
}

std::string fmt_count(const char* before, std::size_t n, const char* after) {
  return std::string(before) + " " + std::to_string(n) + " " + after;
}

std::string dump(const json& j) { return j.dump(-1, ' ', false, json::error_handler_t::replace); }

}  // namespace

std::string to_payload(const Hello& m) {
  return dump({{"protocol", m.protocol},
               {"agent_version", m.agent_version},
               {"kernel_release", m.kernel_release},
               {"boot_id", m.boot_id},
               {"uptime_ms", m.uptime_ms},
               {"hostname", m.hostname},
               {"modules_generation", m.modules_generation}});
}
std::string to_payload(const Heartbeat& m) {
  return dump({{"seq", m.seq}, {"uptime_ms", m.uptime_ms}, {"modules_generation", m.modules_generation},
               {"serial_rearmed", m.serial_rearmed}});
}
std::string to_payload(const Ping& m) { return dump({{"id", m.id}}); }
std::string to_payload(const ExecRequest& m) {
  return dump({{"id", m.id}, {"argv", m.argv}, {"timeout_ms", m.timeout_ms}});
}
std::string to_payload(const ExecResult& m) {
  json j = {{"id", m.id},
            {"stdout", base64_encode(m.stdout_data)},
            {"stderr", base64_encode(m.stderr_data)},
            {"truncated", m.truncated},
            {"timed_out", m.timed_out}};
  j["exit_code"] = m.exit_code ? json(*m.exit_code) : json(nullptr);
  j["signal"] = m.signal ? json(*m.signal) : json(nullptr);
  if (!m.error.empty()) j["error"] = m.error;
  return dump(j);
}
std::string to_payload(const ErrorMessage& m) {
  json j = {{"message", m.message}};
  if (m.id) j["id"] = *m.id;
  return dump(j);
}

std::string to_payload(const ReadFileRequest& m) {
  return dump({{"id", m.id}, {"path", m.path}, {"offset", m.offset}, {"length", m.length}});
}
std::string to_payload(const FileData& m) {
  json j = {{"id", m.id}, {"data", base64_encode(m.data)}, {"eof", m.eof}};
  if (!m.error.empty()) j["error"] = m.error;
  return dump(j);
}

std::string to_payload(const SpawnRequest& m) { return dump({{"id", m.id}, {"argv", m.argv}}); }
std::string to_payload(const Spawned& m) {
  json j = {{"id", m.id}, {"pid", m.pid}};
  if (!m.error.empty()) j["error"] = m.error;
  return dump(j);
}

Hello parse_hello(const std::string& payload) {
  json j = parse_object(payload);
  Hello m;
  auto protocol = get_u64(j, "protocol");
  if (!is_supported_version(protocol))
    throw ProtocolError("agent speaks protocol " + std::to_string(protocol) + "; this build speaks " +
                        supported_versions() + " (install the agent of this release in the guest)");
  m.protocol = static_cast<std::uint32_t>(protocol);
  m.agent_version = get_string(j, "agent_version");
  m.kernel_release = get_string(j, "kernel_release");
  m.boot_id = get_string(j, "boot_id");
  m.uptime_ms = get_u64(j, "uptime_ms");
  m.hostname = get_string(j, "hostname");
  if (j.contains("modules_generation")) m.modules_generation = get_u64(j, "modules_generation");
  return m;
}

Heartbeat parse_heartbeat(const std::string& payload) {
  json j = parse_object(payload);
  Heartbeat m{get_u64(j, "seq"), get_u64(j, "uptime_ms"), 0, 0};
  if (j.contains("modules_generation")) m.modules_generation = get_u64(j, "modules_generation");
  if (j.contains("serial_rearmed")) m.serial_rearmed = get_u64(j, "serial_rearmed");
  return m;
}

Ping parse_ping(const std::string& payload) {
  json j = parse_object(payload);
  return {get_u64(j, "id")};
}

ExecRequest parse_exec_request(const std::string& payload) {
  json j = parse_object(payload);
  ExecRequest m;
  m.id = get_u64(j, "id");
  m.argv = get_argv(j);
  m.timeout_ms = get_u32_in(j, "timeout_ms", 1, 24ull * 3600 * 1000);
  return m;
}

ExecResult parse_exec_result(const std::string& payload) {
  json j = parse_object(payload);
  ExecResult m;
  m.id = get_u64(j, "id");
  const json& code = field(j, "exit_code");
  const json& sig = field(j, "signal");
  if (!code.is_null()) m.exit_code = get_int(code, "exit_code");
  if (!sig.is_null()) m.signal = get_int(sig, "signal");
  if (m.exit_code.has_value() == m.signal.has_value())
    throw ProtocolError("exactly one of \"exit_code\" and \"signal\" must be set");
  m.stdout_data = get_base64(j, "stdout", kMaxOutput);
  m.stderr_data = get_base64(j, "stderr", kMaxOutput);
  const json& truncated = field(j, "truncated");
  const json& timed_out = field(j, "timed_out");
  if (!truncated.is_boolean() || !timed_out.is_boolean())
    throw ProtocolError("fields \"truncated\" and \"timed_out\" must be booleans");
  m.truncated = truncated.get<bool>();
  m.timed_out = timed_out.get<bool>();
  if (j.contains("error")) m.error = get_string(j, "error");
  return m;
}

ErrorMessage parse_error(const std::string& payload) {
  json j = parse_object(payload);
  ErrorMessage m;
  m.message = get_string(j, "message");
  if (j.contains("id")) m.id = get_u64(j, "id");
  return m;
}

}  // namespace immortal::agent

namespace immortal::agent {

SpawnRequest parse_spawn_request(const std::string& payload) {
  json j = parse_object(payload);
  return {get_u64(j, "id"), get_argv(j)};
}

Spawned parse_spawned(const std::string& payload) {
  json j = parse_object(payload);
  Spawned m;
  m.id = get_u64(j, "id");
  m.pid = get_int(field(j, "pid"), "pid");
  if (m.pid < 0) throw ProtocolError("field \"pid\" is negative");
  if (j.contains("error")) m.error = get_string(j, "error");
  if ((m.pid == 0) == m.error.empty()) throw ProtocolError("a spawn answer has either a pid or an error");
  return m;
}

}  // namespace immortal::agent

namespace immortal::agent {

ReadFileRequest parse_read_file(const std::string& payload) {
  json j = parse_object(payload);
  ReadFileRequest m;
  m.id = get_u64(j, "id");
  m.path = get_string(j, "path");
  if (m.path.empty() || m.path[0] != '/') throw ProtocolError("field \"path\" must be an absolute path");
  m.offset = get_u64(j, "offset");
  m.length = get_u32_in(j, "length", 1, kMaxChunk);
  return m;
}

FileData parse_file_data(const std::string& payload) {
  json j = parse_object(payload);
  FileData m;
  m.id = get_u64(j, "id");
  m.data = get_base64(j, "data", kMaxChunk);
  const json& eof = field(j, "eof");
  if (!eof.is_boolean()) throw ProtocolError("field \"eof\" must be a boolean");
  m.eof = eof.get<bool>();
  if (j.contains("error")) m.error = get_string(j, "error");
  if (!m.error.empty() && !m.data.empty()) throw ProtocolError("a failed read carries no data");
  return m;
}

std::optional<std::uint64_t> request_id_of(const std::string& payload) noexcept {
  json j = json::parse(payload, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object()) return std::nullopt;
  auto id = j.find("id");
  if (id == j.end() || !id->is_number_unsigned()) return std::nullopt;
  return id->get<std::uint64_t>();
}

void check_argv(const std::vector<std::string>& argv) {
  if (argv.empty() || argv.size() > kMaxArgs)
    throw ProtocolError(fmt_count("a command has", argv.size(), "arguments: 1 to 256 are allowed"));
  for (const auto& a : argv)
    if (a.size() > kMaxText)
      throw ProtocolError(fmt_count("an argument of the command is", a.size(), "bytes long: at most 4096 are allowed"));
}

}  // namespace immortal::agent
