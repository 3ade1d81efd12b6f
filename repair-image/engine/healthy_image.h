// The healthy copy of the guest kernel's code: its text and read-only data (and each loaded
// module's), read from the running guest while it is healthy. The repair engine compares a
// crashed kernel against it (engine/text_integrity.h) and restores corrupted bytes from it; the
// supervisor checks every restore against the copy it wrote into the repair payload (a sealed
// memfd no agent can write), read in place. On disk (save/load) only for tools and tests.
#pragma once

#include "kernel/kernel.h"
#include "kernel/modules.h"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace immortal::repair {

// Where a piece of a region lay in guest-physical memory when the copy was taken: the region's
// bytes [offset, offset + size) at guest-physical [address, address + size).
struct PhysicalRun {
  std::uint64_t offset = 0, address = 0, size = 0;
};

// A keyed 128-bit digest of one piece of a region: its bytes within one 4 KiB virtual page.
struct PieceDigest {
  std::uint64_t low = 0, high = 0;
  bool operator==(const PieceDigest&) const = default;
};

struct HealthyRegion {
  std::string name;     // "kernel text", "kernel rodata", "immortal_fault text" …
  std::string kind;     // text, rodata
  std::string module;   // "" for the kernel image
  std::uint64_t address = 0;  // kernel virtual
  std::vector<std::uint8_t> bytes;         // the copy, where the image holds it (the supervisor's)
  std::span<const std::uint8_t> borrowed;  // or where it lies (the repair agent's payload), read in place
  // Where the region lay when it was copied, in order, covering it (empty: not known). What lets
  // the supervisor compare the crashed guest's code without reading its page tables
  // (engine/text_precheck.h).
  std::vector<PhysicalRun> physical;
  // One digest per piece, in address order (engine/text_precheck.h, digest_pieces): made where the
  // copy prechecks crashes (the supervisor), never saved or sent to an agent.
  std::vector<PieceDigest> digests;
  // Or packed where it lies (the repair payload's copy): one zstd frame per kPackedChunk bytes of
  // the region (the last one shorter), unpacked a chunk at a time by RegionReader. packed_size:
  // the region's bytes.
  std::vector<std::span<const std::uint8_t>> packed;
  std::uint64_t packed_size = 0;
  bool is_packed() const { return !packed.empty(); }
  // A region that holds its bytes (the supervisor's capture, tests).
  static HealthyRegion holding(std::string name, std::string kind, std::string module, std::uint64_t address,
                               std::vector<std::uint8_t> bytes) {
    HealthyRegion r;
    r.name = std::move(name);
    r.kind = std::move(kind);
    r.module = std::move(module);
    r.address = address;
    r.bytes = std::move(bytes);
    return r;
  }
  // The bytes of a region that is not packed (empty for a packed one: read it with RegionReader).
  std::span<const std::uint8_t> code() const { return borrowed.data() ? borrowed : std::span<const std::uint8_t>(bytes); }
  std::uint64_t size() const { return is_packed() ? packed_size : code().size(); }
  bool contains(std::uint64_t a, std::uint64_t n) const {
    return a >= address && n <= size() && a - address <= size() - n;
  }
};

// Where a module's code and data lay when the copy was taken (the supervisor's plan validation
// uses these instead of reading the crashed guest's module list).
struct ModuleLayout {
  std::string name;
  std::uint64_t base = 0, size = 0, text_size = 0;  // the text: [base, base + text_size)
  // The rest of the module's core, [begin, end) each: one block after the text in Linux 6.1
  // ([base + text_size, base + size)), separate allocations from 6.4.
  std::vector<AddressRange> data;
  bool in_data(std::uint64_t a, std::uint64_t n) const {
    return std::any_of(data.begin(), data.end(), [&](const AddressRange& r) { return r.contains(a, n); });
  }
};
ModuleLayout layout_of(const ModuleInfo& module);
// As healthy.json and the analysis's module_layout carry it: {name, base, size, text_size, data}.
nlohmann::json to_json(const ModuleLayout& module);
// Throws Error(ExitCode::bad_input) for a malformed layout (one that wraps is the caller's to refuse).
ModuleLayout module_layout_from_json(const nlohmann::json& j);

// How much of a region one packed frame holds: what a read of a few bytes unpacks. 16 KiB: under
// TCG the repair VM took about 1 ms for each 64 KiB frame a crash's analysis read code from
// (10 ms a crash), and Debian 6.1's text packs no larger in 16 KiB frames than in 64 KiB ones
// (6.89 against 6.92 MB at level 1; 8 KiB: 7.12, 4 KiB: 7.43).
inline constexpr std::uint64_t kPackedChunk = 16 << 10;

// Reads a region's bytes, unpacking the frames that hold them when the region is packed (and
// keeping the last ones unpacked: reads in address order unpack each frame once). One per user and
// thread; the region must outlive it.
class RegionReader {
 public:
  explicit RegionReader(const HealthyRegion& region) : region_(&region) {}
  // [offset, offset + n) of the region's bytes (n ≤ size() - offset: the caller's to check), valid
  // until the next call. Throws Error(ExitCode::bad_input) when a frame does not unpack to its chunk.
  const std::uint8_t* at(std::uint64_t offset, std::uint64_t n);

 private:
  const HealthyRegion* region_;
  std::vector<std::uint8_t> buffer_;
  std::size_t first_ = 0, end_ = 0;  // the frames [first_, end_) unpacked in buffer_
};

struct HealthyImage {
  std::string release;
  std::string taken_at;   // the profile it was taken with
  std::vector<HealthyRegion> regions;
  std::vector<ModuleLayout> modules;
  std::uint64_t digest_seed = 0;  // the key of the regions' digests (random; never leaves the supervisor)
  const ModuleLayout* module(const std::string& name) const;

  std::uint64_t total_bytes() const;
  // The region holding [address, address + n), or nullptr.
  const HealthyRegion* find(std::uint64_t address, std::uint64_t n = 1) const;

  // On disk: DIR/healthy.json (index) and DIR/healthy.bin (the regions' bytes, concatenated).
  void save(const std::string& dir) const;
  // Throws Error(ExitCode::bad_input) for a missing, damaged or oversized copy.
  static HealthyImage load(const std::string& dir);
  // The same in two steps (a sandboxed reader parses only after it entered its sandbox): the
  // files' bytes, size-checked and not parsed, then what load() makes of them.
  struct Files {
    std::string index, blob;  // healthy.json, healthy.bin
  };
  static Files read_files(const std::string& dir);
  // Those files' bytes as save() writes them (the repair payload carries them in memory). Packed:
  // each region's bytes as zstd frames of kPackedChunk bytes (the payload's copy: 24 MB of Debian
  // 6.1's code in ≈ 10.5 MB at level 1), listed in the index (formats.md, "Repair payload").
  // pack: how a chunk is packed (pack_chunk, in healthy_pack.cc, which the repair agent does not
  // link: it only unpacks); nullptr writes the bytes as they are.
  using ChunkPacker = std::string (*)(std::span<const std::uint8_t> chunk);
  Files to_files(ChunkPacker pack = nullptr) const;
  static HealthyImage parse(const Files& files, const std::string& where);
  // The same from bytes held elsewhere (the repair payload's, read where they lie). With
  // Bytes::borrow the regions read blob in place (no second copy of the kernel's code; packed
  // regions stay packed): blob must then outlive the image. With Bytes::copy packed regions are
  // unpacked.
  enum class Bytes { copy, borrow };
  static HealthyImage parse(std::string_view index, std::string_view blob, const std::string& where, Bytes bytes = Bytes::copy);

 private:
  static HealthyImage parse_index(std::string_view index, std::string_view blob, const std::string& where, Bytes bytes);
};

// What the repair payload carries: the copy's files with every region packed (zstd level 1).
// In healthy_pack.cc (the supervisor's side only).
HealthyImage::Files packed_files(const HealthyImage& image);

// Reads the kernel's text and read-only data (without the data that is written during boot,
// ro_after_init) and every live module's text and read-only data. Throws MemoryFault or Error.
HealthyImage capture_healthy_image(const Kernel& kernel, const std::string& taken_at);

}  // namespace immortal::repair
