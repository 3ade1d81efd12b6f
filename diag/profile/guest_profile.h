// The healthy-guest profile: what the guest agent reports about its kernel while it is healthy,
// kept by the host so that a crashed kernel's memory can be understood without trusting it, and
// stored on disk so that a dump can be analysed offline years later.
//
// On disk (format 1), a directory:
//   profile.json     manifest: format, kernel release, boot id, time, VMCOREINFO location
//   kallsyms         /proc/kallsyms (runtime addresses: KASLR already applied)
//   modules          /proc/modules
//   btf/vmlinux      /sys/kernel/btf/vmlinux
//   btf/<module>     /sys/kernel/btf/<module>, for the modules that have one
// docs/formats.md describes it. Everything read back is validated: it may come from anywhere.
#pragma once

#include "base/budgets.h"
#include "kernel/image_symbols.h"

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <string_view>

namespace immortal {

struct GuestProfile {
  static constexpr int kFormat = 1;
  static constexpr std::size_t kMaxFileSize = budget::kProfileFile;

  std::string kernel_release;
  std::string boot_id;
  std::string taken_at;                 // ISO 8601, UTC
  std::uint64_t vmcoreinfo_paddr = 0;   // from /sys/kernel/vmcoreinfo ("addr size", hex)
  std::uint64_t vmcoreinfo_size = 0;
  std::string kallsyms;
  std::string modules;
  std::string btf_vmlinux;
  std::map<std::string, std::string> btf_modules;
  // Set by a reader whose kallsyms leaves the kernel image's symbols to the host's file of them
  // (the repair payload: kallsyms_without_image): that block, and the image's base in this boot.
  // Never stored.
  std::shared_ptr<const ImageSymbols> image_symbols;
  std::uint64_t image_base = 0;

  // Writes the profile into dir (replacing a previous one as a whole), its files as they are.
  // PackedProfile::store writes them packed (NAME.zst), which every reader below takes too.
  void save(const std::string& dir) const;
  // profile.json as save() writes it.
  std::string manifest_text() const;
  // The files save() writes beside it (relative path → bytes): modules with unsafe names left out.
  std::map<std::string, std::string_view> file_views() const;
  // Reads and validates a profile; throws Error(ExitCode::bad_input) naming what is wrong.
  static GuestProfile load(const std::string& dir);

  // The same in two steps, for a reader that parses only inside its sandbox: the files' bytes
  // (relative path → bytes: profile.json, kallsyms, modules, btf/NAME), read within the budgets
  // and not parsed; then what load() makes of them.
  using Files = std::map<std::string, std::string>;
  static Files read_files(const std::string& dir);
  // The same files as the directory stores them, packed (NAME.zst) or not, size-checked only.
  static Files read_stored_files(const std::string& dir);
  // The same from files held elsewhere (relative path → bytes: the repair payload's), within the
  // same budgets. An entry NAME.zst is NAME as one zstd frame.
  // btf_elsewhere: the kernel's BTF is the host's file of it (a repair payload that leaves it
  // out), added by the caller before parse: btf/vmlinux is not required here.
  static Files files_from(const std::map<std::string, std::string_view>& entries, const std::string& where,
                          bool btf_elsewhere = false);
  // Takes the files by value: pass them with std::move to parse without copying their bytes.
  static GuestProfile parse(Files files, const std::string& where);
};

// Writes a profile directory from its files (relative path → bytes, profile.json among them),
// replacing a previous one as a whole: a reader never sees half of two profiles.
void write_profile_dir(const std::string& dir, const std::map<std::string, std::string_view>& files);

// Parses the content of /sys/kernel/vmcoreinfo ("<hex paddr> <hex size>"); false if malformed.
bool parse_vmcoreinfo_location(const std::string& text, std::uint64_t* paddr, std::uint64_t* size);

}  // namespace immortal
