#include "profile_collector.h"

#include "base/clock.h"
#include "base/budgets.h"
#include "base/error.h"

#include <fmt/format.h>

#include <set>
#include <sstream>

namespace immortal::vmm {

namespace {
constexpr std::size_t kMaxKallsyms = budget::kProfileFile;
constexpr std::size_t kMaxBtf = budget::kProfileFile;

}  // namespace

ProfileCollector::ProfileCollector(AgentChannel& agent, std::string dir, std::function<void(const std::string&)> say)
    : agent_(agent), dir_(std::move(dir)), say_(std::move(say)) {}

void ProfileCollector::collect(std::uint64_t generation) {
  if (busy_ || !agent_.hello()) return;
  busy_ = true;
  generation_ = generation;
  started_ = Clock::now();
  building_ = GuestProfile{};
  building_.kernel_release = agent_.hello()->kernel_release;
  building_.boot_id = agent_.hello()->boot_id;
  boot_id_ = building_.boot_id;
  steps_.clear();
  module_btf_bytes_ = 0;
  auto fetch = [this](const std::string& path, std::size_t max, std::function<void(std::string)> store, bool required) {
    steps_.push_back([this, path, max, store, required] {
      agent_.fetch_file(path, max, [this, path, store, required](std::string data, const std::string& error) {
        if (!error.empty() && required) return finish(error);
        if (error.empty()) store(std::move(data));
        next();
      });
    });
  };
  fetch("/sys/kernel/vmcoreinfo", 4096, [this](std::string d) {
    parse_vmcoreinfo_location(d, &building_.vmcoreinfo_paddr, &building_.vmcoreinfo_size);
  }, false);
  fetch("/proc/kallsyms", kMaxKallsyms, [this](std::string d) { building_.kallsyms = std::move(d); }, true);
  fetch("/sys/kernel/btf/vmlinux", kMaxBtf, [this](std::string d) { building_.btf_vmlinux = std::move(d); }, true);
  fetch("/proc/modules", budget::kProcModules, [this, fetch](std::string d) {
    building_.modules = d;
    // Then the BTF of every loaded module that has one: each name once, at most
    // budget::kProfileModules of them and budget::kProfileModuleBtfTotal bytes in all.
    std::istringstream in(d);
    std::set<std::string> names;
    for (std::string line; std::getline(in, line) && names.size() < budget::kProfileModules;) {
      std::string name = line.substr(0, line.find(' '));
      if (name.empty() || name.size() > budget::kModuleName || name.find('/') != std::string::npos) continue;
      if (!names.insert(name).second) continue;
      fetch("/sys/kernel/btf/" + name, kMaxBtf, [this, name](std::string b) {
        if (module_btf_bytes_ + b.size() > budget::kProfileModuleBtfTotal) return;  // said at the end
        module_btf_bytes_ += b.size();
        building_.btf_modules[name] = std::move(b);
      }, false);
    }
  }, true);
  next();
}

void ProfileCollector::next() {
  if (steps_.empty()) return finish("");
  auto step = std::move(steps_.front());
  steps_.pop_front();
  try {
    step();
  } catch (const Error& e) {
    finish(e.what());
  }
}

void ProfileCollector::finish(const std::string& error) {
  steps_.clear();
  busy_ = false;
  last_seconds_ = std::chrono::duration<double>(Clock::now() - started_).count();
  if (!error.empty()) {
    last_error_ = error;
    say_("cannot collect the guest profile: " + error);
    return;
  }
  building_.taken_at = utc_now();
  std::size_t btf_kib = building_.btf_vmlinux.size() >> 10, btf_modules = building_.btf_modules.size();
  std::shared_ptr<const PackedProfile> packed;
  try {
    // Kept packed, in memory and in dir_ (which is memory too where /run is tmpfs): packed once.
    packed = std::make_shared<const PackedProfile>(building_);
    packed->store(dir_);
  } catch (const Error& e) {
    last_error_ = e.what();
    say_(std::string("cannot save the guest profile: ") + e.what());
    return;
  }
  // Its text is in packed now. Moved out to free it: assigning an empty profile would not
  // (libstdc++ copies a short string into the long one's buffer and keeps it).
  { GuestProfile done = std::move(building_); }
  building_ = GuestProfile{};
  last_error_.clear();
  taken_at_ = packed->head().taken_at;
  ++number_;
  current_ = std::move(packed);
  symbols_ = current_->symbols();
  say_(fmt::format("guest profile saved in {:.1f} s: {} symbols, {} KiB of BTF, {} modules with BTF", last_seconds_,
                   symbols_, btf_kib, btf_modules));
}

void ProfileCollector::adopt(std::shared_ptr<const PackedProfile> profile, std::uint64_t generation) {
  generation_ = generation;
  boot_id_ = profile->head().boot_id;
  taken_at_ = profile->head().taken_at;
  symbols_ = profile->symbols();
  current_ = std::move(profile);
  ++number_;
}

nlohmann::json ProfileCollector::status() const {
  nlohmann::json s = {{"dir", dir_}, {"collecting", busy_}, {"modules_generation", generation_}};
  if (!taken_at_.empty()) {
    s["taken_at"] = taken_at_;
    s["number"] = number_;
    s["symbols"] = symbols_;
    s["seconds"] = last_seconds_;
  }
  if (!last_error_.empty()) s["error"] = last_error_;
  return s;
}

}  // namespace immortal::vmm
