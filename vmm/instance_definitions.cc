#include "instance_definitions.h"

#include "base/error.h"
#include "base/private_dir.h"
#include "instance.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <fstream>

namespace immortal::vmm {

using json = nlohmann::json;

namespace {

constexpr const char* kFormat = "immortal-instance-definition";
constexpr std::size_t kLargestDefinition = 1 << 20;  // a definition is a few hundred bytes

}  // namespace

std::string config_root(const std::string& override_dir) {
  if (!override_dir.empty()) return override_dir;
  if (const char* env = std::getenv("IMMORTAL_CONFIG_DIR"); env && *env) return env;
  if (::geteuid() == 0) return "/etc/immortal";
  if (const char* xdg = std::getenv("XDG_CONFIG_HOME"); xdg && *xdg) return std::string(xdg) + "/immortal";
  const char* home = std::getenv("HOME");
  return std::string(home && *home ? home : "/tmp") + "/.config/immortal";
}

DefinitionStore::DefinitionStore(std::string config_root) : dir_(std::move(config_root) + "/instances") {}

std::string DefinitionStore::path_of(const std::string& name) const {
  check_instance_name(name);  // never a path of its own
  return dir_ + "/" + name + ".json";
}

std::optional<InstanceDefinition> DefinitionStore::load(const std::string& name) const {
  std::string path = path_of(name);
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
  if (fd < 0) {
    if (errno == ENOENT) return std::nullopt;
    fail_os(ExitCode::bad_input, "open " + path, errno);
  }
  std::string text;
  char buf[8192];
  ssize_t n;
  while ((n = ::read(fd, buf, sizeof buf)) > 0 && text.size() <= kLargestDefinition)
    text.append(buf, static_cast<std::size_t>(n));
  ::close(fd);
  if (n < 0) fail_os(ExitCode::bad_input, "read " + path, errno);
  if (text.size() > kLargestDefinition) fail(ExitCode::bad_input, "{} is larger than a definition can be", path);
  json j = json::parse(text, nullptr, false);
  if (j.is_discarded() || !j.is_object()) fail(ExitCode::bad_input, "{} is not JSON (a damaged definition)", path);
  if (j.value("format", "") != kFormat) fail(ExitCode::bad_input, "{} is not an immortal instance definition", path);
  if (!j.contains("version") || !j["version"].is_number_integer())
    fail(ExitCode::bad_input, "{}: no format version", path);
  if (j["version"].get<int>() > InstanceDefinition::kVersion)
    fail(ExitCode::unsupported, "{} has format version {}; this immortal reads up to {}", path, j["version"].get<int>(),
         InstanceDefinition::kVersion);
  InstanceDefinition d;
  d.name = name;
  if (auto a = j.find("autostart"); a != j.end()) {
    if (!a->is_boolean()) fail(ExitCode::bad_input, "{}: autostart is not true or false", path);
    d.autostart = a->get<bool>();
  }
  if (!j.contains("settings") || !j["settings"].is_object()) fail(ExitCode::bad_input, "{}: no settings", path);
  d.settings = j["settings"];
  d.settings["name"] = name;  // the file's name is the instance's
  return d;
}

std::vector<InstanceDefinition> DefinitionStore::all(std::vector<std::string>* problems) const {
  std::vector<InstanceDefinition> out;
  DIR* dir = ::opendir(dir_.c_str());
  if (!dir) return out;
  std::vector<std::string> names;
  while (dirent* e = ::readdir(dir)) {
    std::string leaf = e->d_name;
    if (leaf.size() > 5 && leaf.ends_with(".json") && leaf[0] != '.') names.push_back(leaf.substr(0, leaf.size() - 5));
  }
  ::closedir(dir);
  std::sort(names.begin(), names.end());
  for (const auto& name : names) {
    try {
      if (auto d = load(name)) out.push_back(std::move(*d));
    } catch (const Error& e) {
      if (problems) problems->push_back(e.what());
    }
  }
  return out;
}

void DefinitionStore::save(const InstanceDefinition& d) const {
  std::string path = path_of(d.name);
  ensure_private_directory(dir_, "the definitions directory");
  json j = {{"format", kFormat}, {"version", InstanceDefinition::kVersion}, {"autostart", d.autostart}, {"settings", d.settings}};
  std::string text = j.dump(2, ' ', false, json::error_handler_t::replace) + "\n";
  std::string tmp = path + ".tmp";
  ::unlink(tmp.c_str());
  int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0600);
  if (fd < 0) fail_os(ExitCode::failure, "write " + tmp, errno);
  bool ok = ::write(fd, text.data(), text.size()) == static_cast<ssize_t>(text.size()) && ::fsync(fd) == 0;
  int err = errno;
  ::close(fd);
  if (!ok) {
    ::unlink(tmp.c_str());
    fail_os(ExitCode::failure, "write " + tmp, err);
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) fail_os(ExitCode::failure, "rename " + tmp, errno);
}

bool DefinitionStore::remove(const std::string& name) const {
  std::string path = path_of(name);
  if (::unlink(path.c_str()) == 0) return true;
  if (errno == ENOENT) return false;
  fail_os(ExitCode::failure, "remove " + path, errno);
}

}  // namespace immortal::vmm
