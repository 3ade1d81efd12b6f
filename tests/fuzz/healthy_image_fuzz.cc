// Fuzz target: the healthy copy of the guest's code as the repair agent and the supervisor load
// it (healthy.json, the index, and healthy.bin, the regions' bytes, plain or packed as zstd frames
// of 16 KiB each, as the repair payload carries it). It is built from guest
// memory and kept in the repair image, so it is checked like any guest-derived file. Input: the
// index, a NUL, then the blob. parse() must load or refuse (Error), and what it loads must answer
// lookups inside its own bounds.
#include "base/error.h"
#include "engine/healthy_image.h"

#include <algorithm>
#include <cstdint>

using namespace immortal;

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::uint8_t* end = data + size;
  const std::uint8_t* nul = std::find(data, end, std::uint8_t{0});
  repair::HealthyImage::Files files;
  files.index.assign(reinterpret_cast<const char*>(data), static_cast<std::size_t>(nul - data));
  if (nul != end) files.blob.assign(reinterpret_cast<const char*>(nul + 1), static_cast<std::size_t>(end - nul - 1));
  try {
    // Both ways the readers parse it: copied (the supervisor), and read in place (the agent).
    auto borrowed = repair::HealthyImage::parse(files.index, files.blob, "fuzz", repair::HealthyImage::Bytes::borrow);
    auto image = repair::HealthyImage::parse(files, "fuzz");
    if (borrowed.total_bytes() != image.total_bytes()) __builtin_trap();
    // Packed regions (version 3) read in place a frame at a time give what the copy unpacked whole.
    for (std::size_t i = 0; i < image.regions.size(); ++i) {
      const auto& r = borrowed.regions[i];
      if (!r.size()) continue;
      repair::RegionReader reader(r);
      for (std::uint64_t at = 0; at < r.size(); at += repair::kPackedChunk / 2) {
        std::uint64_t n = std::min(repair::kPackedChunk, r.size() - at);
        const std::uint8_t* bytes = reader.at(at, n);
        if (!std::equal(bytes, bytes + n, image.regions[i].bytes.begin() + static_cast<std::ptrdiff_t>(at))) __builtin_trap();
      }
    }
    for (const auto& r : image.regions) {
      // Physical runs, when given, cover their region in order (what the precheck relies on).
      std::uint64_t covered = 0;
      for (const auto& run : r.physical) {
        if (run.offset != covered || run.size == 0 || run.address + run.size < run.address) __builtin_trap();
        covered += run.size;
      }
      if (!r.physical.empty() && covered != r.size()) __builtin_trap();
      for (std::uint64_t n : {1ull, 8ull, r.size() + 1ull, ~0ull}) {
        for (const auto* img : {&image, &borrowed})
          if (const auto* found = img->find(r.address, n)) {
            repair::RegionReader reader(*found);  // packed or not
            (void)reader.at(r.address - found->address, n)[n - 1];
          }
        (void)image.find(r.address + r.size(), n);
        (void)image.find(r.address - 1, n);
      }
    }
    for (const auto& m : image.modules) {
      if (const auto* found = image.module(m.name)) (void)found->in_data(found->base + found->size, 8);
      (void)m.in_data(~0ull - 4, 8);
    }
  } catch (const Error&) {
  }
  return 0;
}
