#include "cli/device_options.h"

#include "base/error.h"
#include "base/unique_fd.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <fmt/format.h>

#include <charconv>
#include <cstring>
#include <filesystem>
#include <vector>

namespace immortal::vmm {

namespace {

// Splits at commas; ",," is a literal comma (QEMU's convention for paths).
std::vector<std::string> split_options(const std::string& spec) {
  std::vector<std::string> parts(1);
  for (std::size_t i = 0; i < spec.size(); ++i) {
    if (spec[i] != ',') {
      parts.back() += spec[i];
    } else if (i + 1 < spec.size() && spec[i + 1] == ',') {
      parts.back() += ',';
      ++i;
    } else {
      parts.emplace_back();
    }
  }
  return parts;
}

int parse_port(const std::string& text, const std::string& spec) {
  int port = 0;
  auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), port);
  if (text.empty() || ec != std::errc() || end != text.data() + text.size() || port < 1 || port > 65535)
    fail(ExitCode::usage, "--net {}: \"{}\" is not a port (1 to 65535)", spec, text);
  return port;
}

// tcp:[HOSTADDR]:HOSTPORT-:GUESTPORT
PortForward parse_forward(const std::string& text, const std::string& spec) {
  PortForward f;
  auto dash = text.find('-');
  auto first = text.find(':');
  auto second = first == std::string::npos ? std::string::npos : text.find(':', first + 1);
  if (dash == std::string::npos || first == std::string::npos || second == std::string::npos || second > dash ||
      dash + 1 >= text.size() || text[dash + 1] != ':')
    fail(ExitCode::usage, "--net {}: hostfwd={} is not PROTOCOL:[HOSTADDR]:HOSTPORT-:GUESTPORT (e.g. tcp::8080-:80)",
         spec, text);
  f.protocol = text.substr(0, first);
  if (f.protocol != "tcp" && f.protocol != "udp")
    fail(ExitCode::usage, "--net {}: hostfwd protocol \"{}\" is not tcp or udp", spec, f.protocol);
  f.host_address = text.substr(first + 1, second - first - 1);
  in_addr address{};
  if (!f.host_address.empty() && ::inet_pton(AF_INET, f.host_address.c_str(), &address) != 1)
    fail(ExitCode::usage, "--net {}: \"{}\" is not an IPv4 address", spec, f.host_address);
  f.host_port = parse_port(text.substr(second + 1, dash - second - 1), spec);
  f.guest_port = parse_port(text.substr(dash + 2), spec);
  return f;
}

// A host interface's or a virtio-serial port's name: letters, digits, - _ . only, at most `max`.
bool valid_device_name(const std::string& name, std::size_t max) {
  if (name.empty() || name.size() > max) return false;
  for (char c : name)
    if (!(std::isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '_' || c == '.')) return false;
  return true;
}

// A host path as given, made absolute and normal (kept as given when that fails).
void make_absolute(std::string& path) {
  std::error_code ec;
  auto absolute = std::filesystem::absolute(path, ec);
  if (!ec) path = absolute.lexically_normal().string();
}

}  // namespace

DiskConfig parse_disk_option(const std::string& spec) {
  auto parts = split_options(spec);
  DiskConfig disk;
  disk.path = parts[0];
  if (disk.path.empty()) fail(ExitCode::usage, "--disk \"{}\": no path (PATH[,format=qcow2|raw][,readonly])", spec);
  disk.format.clear();  // detected by check_disk unless given
  for (std::size_t i = 1; i < parts.size(); ++i) {
    const std::string& p = parts[i];
    if (p == "readonly" || p == "readonly=on") {
      disk.read_only = true;
    } else if (p == "readonly=off") {
      disk.read_only = false;
    } else if (p.starts_with("format=")) {
      disk.format = p.substr(7);
      if (disk.format != "qcow2" && disk.format != "raw")
        fail(ExitCode::usage, "--disk {}: format \"{}\" is not qcow2 or raw", spec, disk.format);
    } else {
      fail(ExitCode::usage, "--disk {}: unknown option \"{}\" (PATH[,format=qcow2|raw][,readonly]; a comma in PATH is ,,)",
           spec, p);
    }
  }
  return disk;
}

NetConfig parse_net_option(const std::string& spec) {
  auto parts = split_options(spec);
  NetConfig net;
  const std::string& kind = parts[0];
  if (kind == "user") {
    net.kind = NetConfig::Kind::user;
    for (std::size_t i = 1; i < parts.size(); ++i) {
      if (!parts[i].starts_with("hostfwd="))
        fail(ExitCode::usage, "--net {}: unknown option \"{}\" (user networking takes hostfwd=…)", spec, parts[i]);
      net.forwards.push_back(parse_forward(parts[i].substr(8), spec));
    }
    return net;
  }
  if (kind.starts_with("tap=") || kind.starts_with("bridge=")) {
    bool tap = kind.starts_with("tap=");
    net.kind = tap ? NetConfig::Kind::tap : NetConfig::Kind::bridge;
    net.host_interface = kind.substr(tap ? 4 : 7);
    if (!valid_device_name(net.host_interface, 15))  // IFNAMSIZ - 1
      fail(ExitCode::usage, "--net {}: \"{}\" is not a network interface name", spec, net.host_interface);
    if (parts.size() > 1) fail(ExitCode::usage, "--net {}: unknown option \"{}\"", spec, parts[1]);
    return net;
  }
  fail(ExitCode::usage, "--net \"{}\": expected user[,hostfwd=tcp::HOSTPORT-:GUESTPORT], tap=IFNAME or bridge=BRIDGE",
       spec);
}

ChannelConfig parse_channel_option(const std::string& spec) {
  auto parts = split_options(spec);
  ChannelConfig channel;
  channel.name = parts[0];
  // The guest reads the name from sysfs: nothing a shell or a path would take apart.
  if (!valid_device_name(channel.name, 64))
    fail(ExitCode::usage, "--channel {}: \"{}\" is not a port name (letters, digits, . _ -; e.g. org.example.log)", spec,
         channel.name);
  if (channel.name.starts_with("org.immortal.agent"))
    fail(ExitCode::usage, "--channel {}: the name {} is the agent's", spec, channel.name);
  for (std::size_t i = 1; i < parts.size(); ++i) {
    if (!parts[i].starts_with("path="))
      fail(ExitCode::usage, "--channel {}: unknown option \"{}\" (NAME,path=FILE; a comma in FILE is ,,)", spec, parts[i]);
    channel.path = parts[i].substr(5);
  }
  if (channel.path.empty()) fail(ExitCode::usage, "--channel \"{}\": no file (NAME,path=FILE)", spec);
  return channel;
}

void check_channel(ChannelConfig& channel) {
  make_absolute(channel.path);
  // Created (or appended to) now, so that a mistake shows before the guest starts.
  UniqueFd fd(::open(channel.path.c_str(), O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0640));
  if (!fd) fail(ExitCode::bad_input, "cannot use channel file {}: {}", channel.path, std::strerror(errno));
  struct stat st {};
  if (::fstat(fd.get(), &st) != 0 || !S_ISREG(st.st_mode))
    fail(ExitCode::bad_input, "cannot use channel file {}: not a regular file", channel.path);
}

void check_disk(DiskConfig& disk) {
  make_absolute(disk.path);
  struct stat st {};
  if (::stat(disk.path.c_str(), &st) != 0)
    fail(ExitCode::bad_input, "cannot use disk {}: {}", disk.path, std::strerror(errno));
  if (!S_ISREG(st.st_mode) && !S_ISBLK(st.st_mode))
    fail(ExitCode::bad_input, "cannot use disk {}: not a regular file or block device", disk.path);
  int mode = disk.read_only ? R_OK : R_OK | W_OK;
  if (::access(disk.path.c_str(), mode) != 0)
    fail(ExitCode::bad_input, "cannot use disk {}: {}{}", disk.path, std::strerror(errno),
         disk.read_only ? "" : " (add ,readonly to use it read-only)");
  UniqueFd fd(::open(disk.path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd) fail(ExitCode::bad_input, "cannot open disk {}: {}", disk.path, std::strerror(errno));
  unsigned char magic[4] = {};
  bool qcow2 = ::pread(fd.get(), magic, sizeof magic, 0) == 4 && std::memcmp(magic, "QFI\xfb", 4) == 0;
  if (disk.format.empty()) {
    disk.format = qcow2 ? "qcow2" : "raw";
  } else if (disk.format == "raw" && qcow2) {
    // A qcow2 file given to the guest as raw would let it overwrite the image's own metadata.
    fail(ExitCode::bad_input, "disk {} is a qcow2 image, not raw (leave out format=, or say format=qcow2)", disk.path);
  } else if (disk.format == "qcow2" && !qcow2) {
    fail(ExitCode::bad_input, "disk {} is not a qcow2 image (no qcow2 header)", disk.path);
  }
}

std::string instance_mac(const std::string& instance, std::size_t index) {
  // FNV-1a of the name and the interface number.
  std::uint32_t h = 2166136261u;
  auto mix = [&](unsigned char c) { h = (h ^ c) * 16777619u; };
  for (char c : instance) mix(static_cast<unsigned char>(c));
  mix(static_cast<unsigned char>(index));
  return fmt::format("52:54:00:{:02x}:{:02x}:{:02x}", (h >> 16) & 0xff, (h >> 8) & 0xff, h & 0xff);
}

}  // namespace immortal::vmm
