// The healthy-guest profile as the rooms see it: which one is current (typed, immutable, told
// apart by its number) and whether a new one is being taken. ProfileCollector is the real one;
// tests hand a fixed profile.
#pragma once

#include "profile/packed_profile.h"

#include <cstdint>
#include <memory>
#include <string>

namespace immortal::vmm {

class ProfileSource {
 public:
  virtual ~ProfileSource() = default;
  virtual bool busy() const = 0;             // a new profile is being taken
  virtual std::uint64_t number() const = 0;  // 1, 2, 3 … per profile (0: none yet)
  // Packed: its files are unpacked only to open a kernel view or to save them into a bundle.
  virtual std::shared_ptr<const PackedProfile> current() const = 0;
  virtual const std::string& dir() const = 0;         // where it is saved (for the repair image)
  virtual const std::string& last_error() const = 0;  // why the last one failed ("" if it did not)
};

}  // namespace immortal::vmm
