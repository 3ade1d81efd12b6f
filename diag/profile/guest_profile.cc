#include "profile/guest_profile.h"

#include "base/error.h"
#include "base/io.h"
#include "base/unique_fd.h"
#include "base/zstd_frame.h"

#include <nlohmann/json.hpp>

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <sstream>

namespace immortal {

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

// Mode 0600: the guest's symbols and types are the guest's business.
void write_file(const fs::path& path, std::string_view data) {
  UniqueFd fd(::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0600));
  if (!fd) fail_os(ExitCode::failure, "create " + path.string(), errno);
  write_all(fd.get(), data);
  if (::fsync(fd.get()) != 0) fail_os(ExitCode::failure, "write " + path.string(), errno);
}

std::string read_file(const fs::path& path, bool required) {
  std::error_code ec;
  auto size = fs::file_size(path, ec);
  if (ec) {
    if (!required) return {};
    fail(ExitCode::bad_input, "profile file missing: {}", path.string());
  }
  if (size > GuestProfile::kMaxFileSize) fail(ExitCode::bad_input, "profile file too large: {}", path.string());
  std::ifstream in(path, std::ios::binary);
  std::string data(size, '\0');
  if (!in.read(data.data(), static_cast<std::streamsize>(size)))
    fail(ExitCode::bad_input, "cannot read profile file {}", path.string());
  return data;
}

// The modules' BTF a profile may hold: budget::kProfileModules of them, budget::kProfileModuleBtfTotal
// bytes in all.
class ModuleBtfBudget {
 public:
  void count_module(const std::string& where) {
    if (++count_ > budget::kProfileModules)
      fail(ExitCode::bad_input, "{}: more than {} modules with BTF", where, budget::kProfileModules);
  }
  void add_bytes(std::string_view btf, const std::string& where) {
    if ((bytes_ += btf.size()) > budget::kProfileModuleBtfTotal)
      fail(ExitCode::bad_input, "{}: the modules' BTF is larger than {} MiB in all", where, budget::kProfileModuleBtfTotal >> 20);
  }

 private:
  std::size_t count_ = 0;
  std::uint64_t bytes_ = 0;
};

bool safe_module_name(const std::string& name) {
  if (name.empty() || name.size() > 64) return false;
  for (char c : name)
    if (!(std::isalnum(static_cast<unsigned char>(c)) || c == '_' || c == '-')) return false;
  return true;
}

}  // namespace

bool parse_vmcoreinfo_location(const std::string& text, std::uint64_t* paddr, std::uint64_t* size) {
  std::istringstream in(text);
  std::string a, b;
  if (!(in >> a >> b)) return false;
  try {
    std::size_t used_a = 0, used_b = 0;
    *paddr = std::stoull(a, &used_a, 16);
    *size = std::stoull(b, &used_b, 16);
    return used_a == a.size() && used_b == b.size() && *size > 0 && *size <= (1 << 20);
  } catch (const std::exception&) {
    return false;
  }
}

std::string GuestProfile::manifest_text() const {
  json module_btf = json::array();
  for (const auto& [name, data] : btf_modules)
    if (safe_module_name(name)) module_btf.push_back(name);
  json manifest = {{"format", kFormat},
                   {"kernel_release", kernel_release},
                   {"boot_id", boot_id},
                   {"taken_at", taken_at},
                   {"vmcoreinfo", {{"paddr", vmcoreinfo_paddr}, {"size", vmcoreinfo_size}}},
                   {"module_btf", module_btf}};
  return manifest.dump(2) + "\n";
}

std::map<std::string, std::string_view> GuestProfile::file_views() const {
  std::map<std::string, std::string_view> files = {
      {"kallsyms", kallsyms}, {"modules", modules}, {"btf/vmlinux", btf_vmlinux}};
  for (const auto& [name, data] : btf_modules)
    if (safe_module_name(name)) files.emplace("btf/" + name, data);
  return files;
}

void GuestProfile::save(const std::string& dir) const {
  std::map<std::string, std::string_view> files = file_views();
  std::string manifest = manifest_text();
  files.emplace("profile.json", manifest);
  write_profile_dir(dir, files);
}

void write_profile_dir(const std::string& dir, const std::map<std::string, std::string_view>& files) {
  fs::path target(dir);
  fs::path temp = target.string() + ".new";
  fs::path old = target.string() + ".old";
  std::error_code ec;
  fs::remove_all(temp, ec);
  for (const auto& d : {temp, temp / "btf"})
    if (::mkdir(d.c_str(), 0700) != 0) fail_os(ExitCode::failure, "create " + d.string(), errno);
  // The manifest last: a directory with one is complete.
  for (const auto& [name, bytes] : files)
    if (name != "profile.json") write_file(temp / name, bytes);
  write_file(temp / "profile.json", files.at("profile.json"));
  // Swap whole directories so a reader never sees half of two profiles.
  fs::remove_all(old, ec);
  if (fs::exists(target)) fs::rename(target, old);
  fs::rename(temp, target);
  fs::remove_all(old, ec);
}

GuestProfile::Files GuestProfile::read_stored_files(const std::string& dir) {
  fs::path root(dir);
  Files files;
  // Each file as NAME or, packed, NAME.zst (an instance directory's copy).
  auto read_either = [&](const std::string& name) {
    fs::path packed = root / (name + ".zst");
    std::error_code missing;
    if (fs::exists(packed, missing)) files[name + ".zst"] = read_file(packed, true);
    else files[name] = read_file(root / name, true);
  };
  for (const char* name : {"profile.json", "kallsyms", "modules", "btf/vmlinux"}) read_either(name);
  // Every module's BTF the directory holds, within the budgets (the manifest, parsed later,
  // says which of them belong).
  std::error_code ec;
  ModuleBtfBudget budget;
  for (const auto& entry : fs::directory_iterator(root / "btf", ec)) {
    std::string file = entry.path().filename().string();
    std::string name = file.ends_with(".zst") ? file.substr(0, file.size() - 4) : file;
    if (name == "vmlinux" || !safe_module_name(name)) continue;
    budget.count_module(dir);
    budget.add_bytes(files["btf/" + file] = read_file(entry.path(), true), dir);
  }
  return files;
}

GuestProfile::Files GuestProfile::read_files(const std::string& dir) {
  Files stored = read_stored_files(dir);
  bool packed = std::any_of(stored.begin(), stored.end(), [](const auto& f) { return f.first.ends_with(".zst"); });
  if (!packed) return stored;
  std::map<std::string, std::string_view> entries(stored.begin(), stored.end());
  return files_from(entries, dir);
}

GuestProfile::Files GuestProfile::files_from(const std::map<std::string, std::string_view>& entries, const std::string& where,
                                             bool btf_elsewhere) {
  Files files;
  ModuleBtfBudget budget;
  for (const auto& [entry, stored] : entries) {
    if (stored.size() > kMaxFileSize) fail(ExitCode::bad_input, "{}: {} is larger than {} MiB", where, entry, kMaxFileSize >> 20);
    // NAME.zst: NAME packed (the repair payload's files), unpacked within the same budgets.
    bool packed = entry.ends_with(".zst");
    std::string name = packed ? entry.substr(0, entry.size() - 4) : entry;
    if (name.starts_with("btf/") && name != "btf/vmlinux" && !safe_module_name(name.substr(4))) continue;
    if (files.count(name)) fail(ExitCode::bad_input, "{}: {} is there twice", where, name);
    std::string bytes = packed ? zstd_unpack(stored, kMaxFileSize, where + ": " + entry) : std::string(stored);
    if (name.starts_with("btf/") && name != "btf/vmlinux") {
      budget.count_module(where);
      budget.add_bytes(bytes, where);
    }
    files.emplace(std::move(name), std::move(bytes));
  }
  for (const char* required : {"profile.json", "kallsyms", "modules", "btf/vmlinux"})
    if (!files.count(required) && !(btf_elsewhere && std::string_view(required) == "btf/vmlinux"))
      fail(ExitCode::bad_input, "profile file missing: {}/{}", where, required);
  return files;
}

GuestProfile GuestProfile::load(const std::string& dir) { return parse(read_files(dir), dir); }

GuestProfile GuestProfile::parse(Files files, const std::string& dir) {
  auto file = [&](const std::string& name) -> std::string& {
    auto it = files.find(name);
    if (it == files.end()) fail(ExitCode::bad_input, "profile file missing: {}/{}", dir, name);
    return it->second;
  };
  json manifest = json::parse(file("profile.json"), nullptr, false);
  if (manifest.is_discarded() || !manifest.is_object())
    fail(ExitCode::bad_input, "{}: profile.json is not a JSON object", dir);
  const auto format = manifest.find("format");
  if (format == manifest.end() || !format->is_number_integer() || format->get<std::int64_t>() != kFormat)
    fail(ExitCode::bad_input, "{}: unsupported profile format {} (this version reads {})", dir,
         format == manifest.end() ? "(none)" : format->dump(), kFormat);
  GuestProfile p;
  try {
    p.kernel_release = manifest.at("kernel_release").get<std::string>();
    p.boot_id = manifest.value("boot_id", "");
    p.taken_at = manifest.value("taken_at", "");
    const json& v = manifest.at("vmcoreinfo");
    p.vmcoreinfo_paddr = v.at("paddr").get<std::uint64_t>();
    p.vmcoreinfo_size = v.at("size").get<std::uint64_t>();
    const json modules = manifest.value("module_btf", json::array());
    if (!modules.is_array() || modules.size() > budget::kProfileModules)
      fail(ExitCode::bad_input, "{}: profile.json lists more than {} modules with BTF", dir, budget::kProfileModules);
    for (const auto& name : modules) {
      std::string n = name.get<std::string>();
      if (!safe_module_name(n)) fail(ExitCode::bad_input, "{}: bad module name in profile.json", dir);
      p.btf_modules[n] = std::move(file("btf/" + n));
    }
  } catch (const json::exception& e) {
    fail(ExitCode::bad_input, "{}: malformed profile.json: {}", dir, e.what());
  }
  p.kallsyms = std::move(file("kallsyms"));
  p.modules = std::move(file("modules"));
  p.btf_vmlinux = std::move(file("btf/vmlinux"));
  return p;
}

}  // namespace immortal
