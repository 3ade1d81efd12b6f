#include "engine/held_references.h"

#include "base/error.h"
#include "engine/crash_analysis.h"
#include "kernel/slab.h"

#include <fmt/format.h>

#include <set>

namespace immortal::repair {

namespace {

struct Taker {
  const char* function;
  const char* type;
};
// fs/kernfs/file.c and fs/debugfs/file.c (Linux 6.1).
constexpr Taker kTakers[] = {
    {"kernfs_fop_write_iter", "kernfs-active"}, {"kernfs_file_read_iter", "kernfs-active"},
    {"kernfs_seq_show", "kernfs-active"},       {"full_proxy_read", "debugfs-file"},
    {"full_proxy_write", "debugfs-file"},       {"full_proxy_unlocked_ioctl", "debugfs-file"},
    {"full_proxy_poll", "debugfs-file"},        {"full_proxy_llseek", "debugfs-file"},
    {"debugfs_attr_read", "debugfs-file"},      {"debugfs_attr_write", "debugfs-file"},
    {"debugfs_attr_write_signed", "debugfs-file"},
};

}  // namespace

nlohmann::json HeldReference::to_json() const {
  return {{"type", type}, {"taken_by", taken_by}, {"object", fmt::format("{:#x}", object)},
          {"file", fmt::format("{:#x}", file)}, {"release", release}};
}

ReferenceSearch find_held_references(const Kernel& kernel, const CrashAnalysis& a, const std::vector<std::uint64_t>& values) {
  ReferenceSearch out;
  const auto& frames = a.backtrace.frames;
  const auto& symbols = kernel.symbols();
  if (a.fault_frame < 0 || a.context != "process") return out;  // taken only in system calls
  std::set<std::string> types;
  std::string first_taker;
  for (std::size_t k = static_cast<std::size_t>(a.fault_frame) + 1; k < frames.size(); ++k) {
    auto s = symbols.lookup(frames[k].pc - 1);
    if (!s || !s->module().empty()) continue;
    for (const auto& t : kTakers)
      if (base_function_name(s->name()) == t.function && types.insert(t.type).second) {
        if (first_taker.empty()) first_taker = t.function;
        HeldReference r;
        r.type = t.type;
        r.taken_by = t.function;
        out.references.push_back(r);
      }
  }
  if (out.references.empty()) return out;
  try {
    const auto& m = kernel.memory();
    const auto& ty = kernel.types();
    std::string why;
    auto slab = SlabLookup::from_kernel(kernel, &why);
    if (!slab) fail(ExitCode::bad_input, "slab objects cannot be told apart ({})", why);
    // The files the crashing path was serving.
    std::vector<std::uint64_t> files;
    for (std::uint64_t v : values)
      if (auto o = slab->object_at(v); o && o->start == v && o->cache == "filp" &&
                                       std::find(files.begin(), files.end(), v) == files.end())
        files.push_back(v);
    std::uint64_t kernfs_fops = symbols.address_of("kernfs_file_fops").value_or(0);
    for (auto& r : out.references) {
      std::set<std::uint64_t> objects;
      std::uint64_t through = 0;
      for (std::uint64_t f : files) {
        try {
          if (r.type == "kernfs-active") {
            if (!kernfs_fops || m.read_u64(f + ty.offset_of("file", "f_op")) != kernfs_fops) continue;
            std::uint64_t seq = m.read_u64(f + ty.offset_of("file", "private_data"));
            std::uint64_t of = m.read_u64(seq + ty.offset_of("seq_file", "private"));
            std::uint64_t kn = m.read_u64(of + ty.offset_of("kernfs_open_file", "kn"));
            auto active = m.read_value<std::int32_t>(kn + ty.offset_of("kernfs_node", "active"));
            if (active == 0 || active == kKernfsDeactivatedBias) continue;
            objects.insert(kn);
            through = f;
          } else {
            std::uint64_t dentry = m.read_u64(f + ty.offset_of("file", "f_path.dentry"));
            std::uint64_t sb = m.read_u64(dentry + ty.offset_of("dentry", "d_sb"));
            auto magic = m.read_u64(sb + ty.offset_of("super_block", "s_magic"));
            if (magic != kDebugfsMagic) continue;
            std::uint64_t fsd = m.read_u64(dentry + ty.offset_of("dentry", "d_fsdata"));
            if (fsd & 1) continue;  // DEBUGFS_FSDATA_IS_REAL_FOPS_BIT: no reference was ever taken
            auto users = m.read_value<std::int32_t>(fsd + ty.offset_of("debugfs_fsdata", "active_users"));
            if (users < 1) continue;
            objects.insert(dentry);
            through = f;
          }
        } catch (const MemoryFault&) {
        }
      }
      if (objects.size() != 1) {
        out.unexplained.push_back(fmt::format("{} took a {} reference, but {} the crashing path's files hold one: it "
                                              "cannot be released", r.taken_by, r.type,
                                              objects.empty() ? "none of" : "several of"));
        continue;
      }
      r.object = *objects.begin();
      r.file = through;
      r.release = r.type == "kernfs-active" ? "kernfs_put_active" : "debugfs_file_put";
    }
  } catch (const Error& e) {
    out.unexplained.push_back(std::string("the references the crashing path took cannot be checked: ") + e.what());
  } catch (const MemoryFault& e) {
    out.unexplained.push_back(std::string("the references the crashing path took cannot be checked: ") + e.what());
  }
  std::erase_if(out.references, [](const HeldReference& r) { return r.object == 0; });
  return out;
}

}  // namespace immortal::repair
