#include "profile/packed_profile.h"

#include "base/error.h"
#include "base/zstd_frame.h"

#include <algorithm>
#include <map>
#include <string_view>

namespace immortal {

namespace {

// Level 1: the profile is packed after every module load, on the way to the repair path being
// ready again (issue 20: within 1 s), and level 1 already takes it to about a quarter.
constexpr int kLevel = 1;

}  // namespace

PackedProfile::PackedProfile(const GuestProfile& profile) {
  head_.kernel_release = profile.kernel_release;
  head_.boot_id = profile.boot_id;
  head_.taken_at = profile.taken_at;
  head_.vmcoreinfo_paddr = profile.vmcoreinfo_paddr;
  head_.vmcoreinfo_size = profile.vmcoreinfo_size;
  for (const auto& [name, bytes] : profile.file_views()) files_.push_back({name, zstd_pack(bytes, kLevel), bytes.size()});
  symbols_ = static_cast<std::size_t>(std::count(profile.kallsyms.begin(), profile.kallsyms.end(), '\n'));
}

GuestProfile PackedProfile::unpack() const {
  GuestProfile out = head_;
  for (const auto& f : files_) {
    std::string bytes = zstd_unpack(f.packed, f.size, "the guest profile's " + f.name + " held in memory");
    if (f.name == "kallsyms") out.kallsyms = std::move(bytes);
    else if (f.name == "modules") out.modules = std::move(bytes);
    else if (f.name == "btf/vmlinux") out.btf_vmlinux = std::move(bytes);
    else out.btf_modules.emplace(f.name.substr(4), std::move(bytes));
  }
  return out;
}

void PackedProfile::store(const std::string& dir) const {
  GuestProfile manifest = head_;
  for (const auto& f : files_)
    if (f.name.starts_with("btf/") && f.name != "btf/vmlinux") manifest.btf_modules.emplace(f.name.substr(4), "");
  std::string text = manifest.manifest_text();
  std::map<std::string, std::string_view> files = {{"profile.json", text}};
  for (const auto& f : files_) files.emplace(f.name + ".zst", f.packed);
  write_profile_dir(dir, files);
}

std::size_t PackedProfile::packed_bytes() const {
  std::size_t n = 0;
  for (const auto& f : files_) n += f.packed.size();
  return n;
}

std::size_t PackedProfile::file_bytes() const {
  std::size_t n = 0;
  for (const auto& f : files_) n += f.size;
  return n;
}

}  // namespace immortal
