#include "recovery/quarantine.h"

#include "base/budgets.h"
#include "base/error.h"
#include "kernel/modules.h"

#include <fmt/format.h>

#include <algorithm>
#include <cstring>
#include <fstream>

namespace immortal::vmm {

void QuarantineList::add(const repair::RepairPlan& plan, std::uint64_t crash, const std::string& time) {
  for (const auto& a : plan.actions) {
    if (a.kind == "pin-module" && a.writes.size() == 1) pins_.push_back({a.detail.value("module", ""), a.writes[0].address, crash});
    if (a.kind != "quarantine-function" || a.writes.size() != 1) continue;
    const auto& w = a.writes.front();
    entries_.push_back({a.detail.value("module", ""), a.detail.value("function", ""), w.address, w.expected, w.bytes,
                        crash, time});
  }
  save();
}

std::vector<std::string> QuarantineList::release(Machine& machine, const Kernel& kernel,
                                                 const std::vector<std::string>& names) {
  for (const auto& n : names)
    if (std::none_of(entries_.begin(), entries_.end(), [&](const QuarantineEntry& e) { return e.function == n; }))
      fail(ExitCode::usage, "{} is not quarantined", n);
  std::vector<std::string> done;
  std::vector<QuarantineEntry> kept;
  for (const auto& e : entries_) {
    if (!names.empty() && std::find(names.begin(), names.end(), e.function) == names.end()) {
      kept.push_back(e);
      continue;
    }
    std::vector<std::uint8_t> now(e.patch.size());
    bool ours = false;
    try {
      kernel.memory().read(e.address, std::as_writable_bytes(std::span(now)));
      ours = now == e.patch;
    } catch (const MemoryFault&) {
    }
    if (!ours) {
      done.push_back(fmt::format("{} [{}]: no longer patched (module reloaded?); forgotten", e.function, e.module));
      continue;
    }
    machine.write_virtual(0, e.address, e.original);
    done.push_back(fmt::format("{} [{}]: restored", e.function, e.module));
  }
  entries_ = std::move(kept);
  // A pinned module whose functions are all back: its extra reference is dropped.
  std::vector<PinnedModule> still;
  for (const auto& p : pins_) {
    if (std::any_of(entries_.begin(), entries_.end(), [&](const QuarantineEntry& e) { return e.module == p.module; })) {
      still.push_back(p);
      continue;
    }
    try {
      // Only while the module is still the one pinned: its struct module, where the pin found
      // it, still names it and is live (a reload puts another struct elsewhere; an unloaded
      // one's memory is unmapped or reused). Fields read at known places, no list walked.
      const auto& t = kernel.types();
      std::uint64_t module = p.refcnt - t.offset_of("module", "refcnt");
      std::uint64_t name_size = std::min<std::uint64_t>(t.require_field("module", "name").size, budget::kModuleName);
      bool same = kernel.memory().read_cstring(module + t.offset_of("module", "name"), name_size) == p.module &&
                  kernel.memory().read_value<std::uint32_t>(module + t.offset_of("module", "state")) == 0;  // MODULE_STATE_LIVE
      auto now = kernel.memory().read_value<std::uint32_t>(p.refcnt);
      if (!same) {
        done.push_back(fmt::format("module {}: reloaded since it was pinned; forgotten", p.module));
      } else if (now >= 2) {
        std::uint32_t less = now - 1;
        std::uint8_t bytes[4];
        std::memcpy(bytes, &less, 4);
        machine.write_virtual(0, p.refcnt, bytes);
        done.push_back(fmt::format("module {}: unpinned (it can be unloaded again)", p.module));
      }
    } catch (const std::exception&) {
      done.push_back(fmt::format("module {}: its pin could not be dropped", p.module));
    }
  }
  pins_ = std::move(still);
  save();
  return done;
}

void QuarantineList::clear() {
  entries_.clear();
  pins_.clear();
  save();
}

nlohmann::json QuarantineList::to_json() const {
  nlohmann::json out = nlohmann::json::array();
  for (const auto& e : entries_)
    out.push_back({{"module", e.module}, {"function", e.function}, {"address", fmt::format("{:#x}", e.address)},
                   {"original", repair::hex_bytes(e.original)}, {"patch", repair::hex_bytes(e.patch)}, {"crash", e.crash}, {"time", e.time}});
  return out;
}

void QuarantineList::save() const {
  // What a supervisor that attaches later needs: the patched functions with their bytes, and the
  // pinned modules (docs/formats.md, "Instance state").
  nlohmann::json pins = nlohmann::json::array();
  for (const auto& p : pins_) pins.push_back({{"module", p.module}, {"refcnt", fmt::format("{:#x}", p.refcnt)}, {"crash", p.crash}});
  nlohmann::json file = {{"version", 1}, {"functions", to_json()}, {"pinned", pins}};
  std::string tmp = path_ + ".tmp";
  {
    std::ofstream out(tmp, std::ios::trunc);
    out << file.dump(2, ' ', false, nlohmann::json::error_handler_t::replace) << "\n";
  }
  std::rename(tmp.c_str(), path_.c_str());
}

void QuarantineList::load() {
  std::ifstream in(path_);
  if (!in) return;  // nothing quarantined yet
  auto file = nlohmann::json::parse(in, nullptr, false);
  if (file.is_discarded() || !file.is_object() || file.value("version", nlohmann::json()) != 1)
    fail(ExitCode::bad_input, "{} is not a quarantine list this immortal reads", path_);
  std::vector<QuarantineEntry> entries;
  std::vector<PinnedModule> pins;
  try {
    for (const auto& e : file.at("functions")) {
      QuarantineEntry q;
      q.module = e.at("module").get<std::string>();
      q.function = e.at("function").get<std::string>();
      q.address = repair::parse_hex(e.at("address"), "address");
      q.original = repair::bytes_from_hex(e.at("original"), 64);
      q.patch = repair::bytes_from_hex(e.at("patch"), 64);
      q.crash = e.at("crash").get<std::uint64_t>();
      q.time = e.at("time").get<std::string>();
      entries.push_back(std::move(q));
    }
    for (const auto& p : file.at("pinned"))
      pins.push_back({p.at("module").get<std::string>(), repair::parse_hex(p.at("refcnt"), "refcnt"), p.at("crash").get<std::uint64_t>()});
  } catch (const nlohmann::json::exception& e) {
    fail(ExitCode::bad_input, "{} is damaged: {}", path_, e.what());
  }
  entries_ = std::move(entries);
  pins_ = std::move(pins);
}

}  // namespace immortal::vmm
