// A healthy-guest profile held compressed, for a long-lived process that has parsed it already.
// The supervisor keeps the newest profile for as long as the guest runs, only to open its kernel
// view again (a new boot, a rebuilt view) and to save it into each crash's bundle: ≈ 8.5 MiB of
// text (kallsyms, BTF) for Debian's 6.1, kept a second time beside what it parsed. Compressed
// with zstd it is ≈ 2 MiB; unpacking takes a few milliseconds, never in a crash's pause.
#pragma once

#include "profile/guest_profile.h"

#include <string>
#include <vector>

namespace immortal {

class PackedProfile {
 public:
  // Compresses profile's files; throws Error(ExitCode::failure) if zstd fails.
  explicit PackedProfile(const GuestProfile& profile);

  // The profile's manifest (release, boot id, time, VMCOREINFO location); its files are empty.
  const GuestProfile& head() const { return head_; }
  // The whole profile again. Throws Error if the packed bytes do not unpack.
  GuestProfile unpack() const;
  // Writes the whole profile into dir, as GuestProfile::save (a bundle's copy: plain files).
  void save(const std::string& dir) const { unpack().save(dir); }
  // Writes it into dir packed as it is held: profile.json, and each file as NAME.zst (the
  // instance directory's copy, which may be memory too: /run is tmpfs on most hosts).
  void store(const std::string& dir) const;

  // The profile's files, packed and as they were (for tests and measurements).
  std::size_t packed_bytes() const;
  std::size_t file_bytes() const;
  std::size_t symbols() const { return symbols_; }  // lines of kallsyms

 private:
  struct File {
    std::string name;    // as GuestProfile::file_views() names it: "kallsyms", "btf/MODULE" …
    std::string packed;  // one zstd frame
    std::size_t size = 0;
  };
  GuestProfile head_;
  std::vector<File> files_;
  std::size_t symbols_ = 0;
};

}  // namespace immortal
