#include "engine/healthy_image.h"

#include "base/budgets.h"
#include "base/error.h"
#include "base/zstd_frame.h"
#include "kernel/modules.h"

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <fstream>
#include <iterator>

namespace immortal::repair {

namespace {

constexpr char kFormat[] = "immortal-healthy-image";
constexpr int kImageVersion = 1;         // the regions' bytes as they are
constexpr int kPackedImageVersion = 3;   // packed: zstd frames of kPackedChunk bytes (16 KiB; 64 in version 2), listed per region
// Debian 6.1's kernel text is 16 MiB and its read-only data 9 MiB; modules add little.
constexpr std::uint64_t kMaxTotal = budget::kHealthyCopyTotal;
constexpr std::uint64_t kMaxRegion = 128ull << 20;
constexpr std::size_t kMaxRegions = 8192;

std::uint64_t parse_address(const nlohmann::json& v) {
  if (!v.is_string()) fail(ExitCode::bad_input, "healthy image: an address is not a string");
  const std::string& s = v.get_ref<const std::string&>();
  std::size_t used = 0;
  std::uint64_t a = 0;
  try {
    a = std::stoull(s, &used, 16);
  } catch (const std::exception&) {
    used = 0;
  }
  if (used == 0 || used != s.size()) fail(ExitCode::bad_input, "healthy image: bad address {:?}", s);
  return a;
}

void add_region(const Kernel& kernel, HealthyImage& image, std::string name, std::string kind, std::string module,
                std::uint64_t begin, std::uint64_t end) {
  if (end <= begin) return;
  if (end - begin > kMaxRegion) fail(ExitCode::bad_input, "{}: {} bytes is more than a kernel has", name, end - begin);
  // The budget is checked before each region is allocated, not once all are read.
  if (image.total_bytes() + (end - begin) > kMaxTotal || image.regions.size() >= kMaxRegions)
    fail(ExitCode::bad_input, "the kernel's code and read-only data are larger than {} MiB (at {})", kMaxTotal >> 20, name);
  HealthyRegion r = HealthyRegion::holding(std::move(name), std::move(kind), std::move(module), begin, std::vector<std::uint8_t>(end - begin));
  kernel.memory().read(begin, std::as_writable_bytes(std::span(r.bytes)));
  // One page-table walk per page that maps it (2 MiB ones for the kernel image).
  for (std::uint64_t va = begin; va < end;) {
    auto m = kernel.memory().mapping_at(va);
    if (!m) {  // it was just read: unmapped meanwhile (a module going away)
      r.physical.clear();
      break;
    }
    std::uint64_t n = std::min(m->bytes, end - va);
    PhysicalRun* last = r.physical.empty() ? nullptr : &r.physical.back();
    if (last && last->address + last->size == m->physical) last->size += n;
    else r.physical.push_back({va - begin, m->physical, n});
    va += n;
  }
  image.regions.push_back(std::move(r));
}

// The runs of a region of `size` bytes, in order and covering it; none when not given.
std::vector<PhysicalRun> parse_physical_runs(const nlohmann::json& list, std::uint64_t size, const std::string& dir) {
  std::vector<PhysicalRun> runs;
  if (list.is_null() || (list.is_array() && list.empty())) return runs;
  if (!list.is_array() || list.size() > size / 4096 + 2)
    fail(ExitCode::bad_input, "{}/healthy.json: a bad list of physical runs", dir);
  std::uint64_t covered = 0;
  for (const auto& run : list) {
    if (!run.is_array() || run.size() != 3 || !run[0].is_number_unsigned() || !run[2].is_number_unsigned())
      fail(ExitCode::bad_input, "{}/healthy.json: a physical run is not [offset, address, size]", dir);
    PhysicalRun p{run[0].get<std::uint64_t>(), parse_address(run[1]), run[2].get<std::uint64_t>()};
    if (p.offset != covered || p.size == 0 || p.size > size - covered || p.address + p.size < p.address)
      fail(ExitCode::bad_input, "{}/healthy.json: physical runs out of order or beyond their region", dir);
    covered += p.size;
    runs.push_back(p);
  }
  if (covered != size) fail(ExitCode::bad_input, "{}/healthy.json: physical runs that do not cover their region", dir);
  return runs;
}

// A packed region's frames, [offset, size] in blob each: one per kPackedChunk bytes of the region,
// each declaring the size of its chunk (checked here; the frames themselves are unpacked when read).
std::vector<std::span<const std::uint8_t>> packed_frames(const nlohmann::json& list, std::uint64_t size, std::string_view blob,
                                                         const std::string& where) {
  std::uint64_t count = (size + kPackedChunk - 1) / kPackedChunk;
  if (!list.is_array() || list.size() != count) fail(ExitCode::bad_input, "{}: not one packed frame per {} bytes", where, kPackedChunk);
  std::vector<std::span<const std::uint8_t>> frames;
  for (std::uint64_t c = 0; c < count; ++c) {
    const auto& f = list[c];
    if (!f.is_array() || f.size() != 2 || !f[0].is_number_unsigned() || !f[1].is_number_unsigned())
      fail(ExitCode::bad_input, "{}: a packed frame is not [offset, size]", where);
    std::uint64_t at = f[0].get<std::uint64_t>(), n = f[1].get<std::uint64_t>();
    if (at > blob.size() || n > blob.size() - at) fail(ExitCode::bad_input, "{}: a packed frame beyond healthy.bin", where);
    std::string_view frame = blob.substr(at, n);
    std::uint64_t chunk = std::min(kPackedChunk, size - c * kPackedChunk);
    if (zstd_declared_size(frame, chunk, where) != chunk)
      fail(ExitCode::bad_input, "{}: packed frame {} does not hold its {} bytes", where, c, chunk);
    frames.push_back({reinterpret_cast<const std::uint8_t*>(frame.data()), frame.size()});
  }
  return frames;
}

}  // namespace

std::uint64_t HealthyImage::total_bytes() const {
  std::uint64_t n = 0;
  for (const auto& r : regions) n += r.size();
  return n;
}

const HealthyRegion* HealthyImage::find(std::uint64_t address, std::uint64_t n) const {
  for (const auto& r : regions)
    if (r.contains(address, n)) return &r;
  return nullptr;
}

ModuleLayout layout_of(const ModuleInfo& module) {
  return ModuleLayout{module.name, module.base, module.size, module.text_size, module.non_text()};
}

const ModuleLayout* HealthyImage::module(const std::string& name) const {
  for (const auto& m : modules)
    if (m.name == name) return &m;
  return nullptr;
}

HealthyImage capture_healthy_image(const Kernel& kernel, const std::string& taken_at) {
  HealthyImage image;
  image.release = kernel.release();
  image.taken_at = taken_at;
  auto sym = [&](const char* name) { return kernel.symbols().address_of(name); };
  auto text_begin = sym("_stext"), text_end = sym("_etext");
  if (!text_begin || !text_end) fail(ExitCode::bad_input, "the profile has no _stext/_etext: no healthy copy of the kernel text");
  add_region(kernel, image, "kernel text", "text", "", *text_begin, *text_end);
  auto ro_begin = sym("__start_rodata"), ro_end = sym("__end_rodata");
  auto rw_begin = sym("__start_ro_after_init"), rw_end = sym("__end_ro_after_init");
  if (ro_begin && ro_end) {
    // Data marked __ro_after_init is written while the kernel boots: only the rest is compared.
    if (rw_begin && rw_end && *ro_begin <= *rw_begin && *rw_begin <= *rw_end && *rw_end <= *ro_end) {
      add_region(kernel, image, "kernel rodata", "rodata", "", *ro_begin, *rw_begin);
      add_region(kernel, image, "kernel rodata (after ro_after_init)", "rodata", "", *rw_end, *ro_end);
    } else {
      add_region(kernel, image, "kernel rodata", "rodata", "", *ro_begin, *ro_end);
    }
  }
  ModuleList modules = read_modules(kernel);
  for (const auto& m : modules.modules) {
    if (m.state != "live" || !m.base || m.text_size > m.size) continue;
    image.modules.push_back(layout_of(m));
    add_region(kernel, image, m.name + " text", "text", m.name, m.base, m.base + m.text_size);
    if (!m.rodata.empty() && m.rodata.size() <= m.size)
      add_region(kernel, image, m.name + " rodata", "rodata", m.name, m.rodata.begin, m.rodata.end);
  }
  return image;
}

HealthyImage::Files HealthyImage::to_files(ChunkPacker pack) const {
  Files files;
  nlohmann::json index = {{"format", kFormat}, {"version", pack ? kPackedImageVersion : kImageVersion}, {"release", release},
                          {"taken_at", taken_at}};
  nlohmann::json list = nlohmann::json::array();
  if (!pack) files.blob.reserve(total_bytes());
  for (const auto& r : regions) {
    nlohmann::json physical = nlohmann::json::array();
    for (const auto& run : r.physical) physical.push_back({run.offset, fmt::format("{:#x}", run.address), run.size});
    nlohmann::json entry = {{"name", r.name}, {"kind", r.kind}, {"module", r.module}, {"address", fmt::format("{:#x}", r.address)},
                            {"offset", files.blob.size()}, {"size", r.size()}, {"physical", physical}};
    RegionReader reader(r);
    if (pack) {
      nlohmann::json frames = nlohmann::json::array();
      for (std::uint64_t at = 0; at < r.size(); at += kPackedChunk) {
        std::uint64_t n = std::min(kPackedChunk, r.size() - at);
        std::string frame = pack({reader.at(at, n), n});
        frames.push_back({files.blob.size(), frame.size()});
        files.blob += frame;
      }
      entry["packed"] = frames;
    } else {
      for (std::uint64_t at = 0; at < r.size(); at += kPackedChunk) {
        std::uint64_t n = std::min(kPackedChunk, r.size() - at);
        files.blob.append(reinterpret_cast<const char*>(reader.at(at, n)), n);
      }
    }
    list.push_back(std::move(entry));
  }
  index["regions"] = list;
  nlohmann::json mods = nlohmann::json::array();
  for (const auto& m : modules) mods.push_back(to_json(m));
  index["modules"] = mods;
  files.index = index.dump(1) + "\n";
  return files;
}

const std::uint8_t* RegionReader::at(std::uint64_t offset, std::uint64_t n) {
  const HealthyRegion& r = *region_;
  if (!r.is_packed()) return r.code().data() + offset;
  std::size_t first = offset / kPackedChunk, end = (offset + std::max<std::uint64_t>(n, 1) - 1) / kPackedChunk + 1;
  if (end > r.packed.size()) fail(ExitCode::bad_input, "{}: a read beyond the packed copy", r.name);
  if (first < first_ || end > end_) {
    first_ = end_ = 0;  // nothing held should an unpack fail
    buffer_.resize(std::min<std::uint64_t>((end - first) * kPackedChunk, r.size() - first * kPackedChunk));
    for (std::size_t c = first; c < end; ++c) {
      std::uint64_t from = c * kPackedChunk, len = std::min(kPackedChunk, r.size() - from);
      zstd_unpack_into({reinterpret_cast<const char*>(r.packed[c].data()), r.packed[c].size()},
                       {buffer_.data() + (from - first * kPackedChunk), len}, fmt::format("{}: packed chunk {}", r.name, c));
    }
    first_ = first;
    end_ = end;
  }
  return buffer_.data() + (offset - first_ * kPackedChunk);
}

void HealthyImage::save(const std::string& dir) const {
  Files files = to_files();
  for (const auto& [leaf, bytes] : {std::pair<const char*, const std::string&>{"healthy.bin", files.blob},
                                    std::pair<const char*, const std::string&>{"healthy.json", files.index}}) {
    std::ofstream out(dir + "/" + leaf, std::ios::binary | std::ios::trunc);
    out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
    out.close();
    if (!out) fail(ExitCode::failure, "cannot write {}/{}", dir, leaf);
  }
}

HealthyImage::Files HealthyImage::read_files(const std::string& dir) {
  auto read = [&](const std::string& leaf, std::uint64_t max) {
    std::ifstream in(dir + "/" + leaf, std::ios::binary);
    if (!in) fail(ExitCode::bad_input, "cannot read {}/{}", dir, leaf);
    in.seekg(0, std::ios::end);
    std::streamoff size = in.tellg();
    if (size < 0 || static_cast<std::uint64_t>(size) > max) fail(ExitCode::bad_input, "{}/{}: bad size", dir, leaf);
    std::string bytes(static_cast<std::size_t>(size), '\0');
    in.seekg(0);
    in.read(bytes.data(), size);
    if (!in) fail(ExitCode::bad_input, "{}/{}: short read", dir, leaf);
    return bytes;
  };
  return {read("healthy.json", 16 << 20), read("healthy.bin", kMaxTotal)};
}

HealthyImage HealthyImage::load(const std::string& dir) { return parse(read_files(dir), dir); }

HealthyImage HealthyImage::parse(const Files& files, const std::string& dir) { return parse(files.index, files.blob, dir); }

HealthyImage HealthyImage::parse(std::string_view index, std::string_view blob, const std::string& dir, Bytes bytes) {
  try {
    return parse_index(index, blob, dir, bytes);
  } catch (const nlohmann::json::exception& e) {
    // A field of the wrong type (value() throws for those): the file is damaged, not our bug.
    fail(ExitCode::bad_input, "{}/healthy.json: {}", dir, e.what());
  }
}

HealthyImage HealthyImage::parse_index(std::string_view index_text, std::string_view blob, const std::string& dir,
                                       Bytes bytes) {
  nlohmann::json index = nlohmann::json::parse(index_text, nullptr, false);
  if (index.is_discarded() || !index.is_object()) fail(ExitCode::bad_input, "{}/healthy.json is not JSON", dir);
  // Compared as JSON values: value("version", 0) would convert a float like 1e300 to int (UB).
  bool packed = index.value("version", nlohmann::json()) == kPackedImageVersion;
  if (index.value("format", "") != kFormat || (!packed && index.value("version", nlohmann::json()) != kImageVersion))
    fail(ExitCode::bad_input, "{}/healthy.json: not a version {} or {} healthy image", dir, kImageVersion, kPackedImageVersion);

  HealthyImage image;
  image.release = index.value("release", "");
  image.taken_at = index.value("taken_at", "");
  if (!index.contains("regions")) fail(ExitCode::bad_input, "{}/healthy.json: no region list", dir);
  const auto& list = index["regions"];
  if (!list.is_array() || list.size() > kMaxRegions) fail(ExitCode::bad_input, "{}/healthy.json: bad region list", dir);
  std::uint64_t unpacked = 0;
  for (const auto& r : list) {
    if (!r.is_object() || !r.contains("offset") || !r["offset"].is_number_unsigned() || !r.contains("size") ||
        !r["size"].is_number_unsigned() || !r.contains("address"))
      fail(ExitCode::bad_input, "{}/healthy.json: a region without address, offset and size", dir);
    std::uint64_t offset = r["offset"].get<std::uint64_t>(), size = r["size"].get<std::uint64_t>();
    if (!packed && (offset > blob.size() || size > blob.size() - offset))
      fail(ExitCode::bad_input, "{}/healthy.json: a region beyond healthy.bin", dir);
    // Packed, the sizes are what the frames unpack to: bounded before anything is unpacked.
    if (packed && (size > kMaxRegion || size > kMaxTotal - unpacked))
      fail(ExitCode::bad_input, "{}/healthy.json: regions larger than {} MiB", dir, kMaxTotal >> 20);
    unpacked += size;
    HealthyRegion region = HealthyRegion::holding(r.value("name", ""), r.value("kind", ""), r.value("module", ""), parse_address(r["address"]), {});
    if (region.address + size < region.address) fail(ExitCode::bad_input, "{}/healthy.json: a region wraps", dir);
    region.physical = parse_physical_runs(r.value("physical", nlohmann::json()), size, dir);
    if (packed) {
      region.packed = packed_frames(r.value("packed", nlohmann::json()), size, blob, fmt::format("{}/healthy.json: {}", dir, region.name));
      region.packed_size = size;
      if (bytes == Bytes::copy) {  // unpacked here, once
        RegionReader reader(region);
        const std::uint8_t* all = size ? reader.at(0, size) : nullptr;
        std::vector<std::uint8_t> plain(all, all + size);
        region.packed.clear();
        region.packed_size = 0;
        region.bytes = std::move(plain);
      }
    } else {
      const auto* first = reinterpret_cast<const std::uint8_t*>(blob.data()) + offset;
      if (bytes == Bytes::borrow && size) region.borrowed = {first, size};
      else region.bytes.assign(first, first + size);
    }
    image.regions.push_back(std::move(region));
  }
  if (index.contains("modules") && index["modules"].is_array() && index["modules"].size() <= kMaxRegions)
    for (const auto& m : index["modules"]) {
      try {
        image.modules.push_back(module_layout_from_json(m));
      } catch (const Error& e) {
        fail(ExitCode::bad_input, "{}/healthy.json: {}", dir, e.what());
      }
    }
  return image;
}

nlohmann::json to_json(const ModuleLayout& m) {
  nlohmann::json data = nlohmann::json::array();
  for (const auto& r : m.data) data.push_back({fmt::format("{:#x}", r.begin), fmt::format("{:#x}", r.end)});
  return {{"name", m.name}, {"base", fmt::format("{:#x}", m.base)}, {"size", m.size}, {"text_size", m.text_size},
          {"data", data}};
}

ModuleLayout module_layout_from_json(const nlohmann::json& m) {
  auto count = [&](const char* key) {
    auto v = m.find(key);
    return v != m.end() && v->is_number_integer() && (v->is_number_unsigned() || v->get<std::int64_t>() >= 0);
  };
  if (!m.is_object() || !m.contains("base") || !count("size") || !count("text_size") ||
      !m.value("name", nlohmann::json()).is_string())
    fail(ExitCode::bad_input, "a module without its layout");
  ModuleLayout l{m["name"].get<std::string>(), parse_address(m["base"]), m["size"].get<std::uint64_t>(),
                 m["text_size"].get<std::uint64_t>(), {}};
  const auto& data = m.value("data", nlohmann::json());
  if (data.is_array() && data.size() <= 8) {
    for (const auto& r : data) {
      if (!r.is_array() || r.size() != 2) fail(ExitCode::bad_input, "module {}: a bad data range", l.name);
      std::uint64_t begin = parse_address(r[0]), end = parse_address(r[1]);
      if (end < begin) fail(ExitCode::bad_input, "module {}: a data range ends before it begins", l.name);
      l.data.push_back({begin, end});
    }
  } else if (l.size > l.text_size && l.base + l.size > l.base) {
    l.data.push_back({l.base + l.text_size, l.base + l.size});  // the one block of Linux 6.1
  }
  return l;
}

}  // namespace immortal::repair
