#include "repair/repair_broker.h"

#include "repair/shared_kernel_files.h"
#include "repair/shared_repair_vm.h"

#include "base/clock.h"
#include "base/error.h"
#include "repair/inline_repair.h"

#include <fmt/format.h>

#include <bit>
#include <filesystem>
#include <thread>

namespace immortal::vmm {

namespace {

constexpr auto kFirstRetry = std::chrono::seconds(5);
constexpr auto kLongestRetry = std::chrono::seconds(300);

// A failed worker is started again after 10 s, then 20, 40 … up to kLongestRetry.
void note_failure(auto& slot) {
  ++slot.failures;
  slot.retry_at = Clock::now() + std::min<std::chrono::seconds>(kFirstRetry * (1 << std::min(slot.failures, 6)), kLongestRetry);
}

KernelPartDigests digests_of(const HostKernelFiles& files) {
  auto digest = [](const std::optional<KernelFileWindow>& file) { return file ? file->digest : std::string(); };
  return {digest(files.symbols), digest(files.types), digest(files.unwind)};
}

// Whether files of these digests hold every part a payload leaves to them.
bool serve(const KernelPartDigests& files, const KernelPartsFromHost& needed) {
  auto holds = [](const std::string& file, const std::string& digest) { return digest.empty() || file == digest; };
  return holds(files.symbols, needed.digests.symbols) && holds(files.btf, needed.digests.btf) &&
         holds(files.orc, needed.digests.orc);
}

}  // namespace

std::uint64_t repair_vm_memory(std::uint64_t payload_bytes, std::uint64_t guest_ram_bytes) {
  // The kernel and the agent's initramfs take about 100 MiB; the agent holds the parsed profile
  // and the healthy copy (about the payload's size) and copies the profile's files once while it
  // parses them. Measured with Debian's 6.1 and a 31 MiB payload: 170 MiB used of 384.
  // And page tables for windows as large as the guest's RAM, which sysfs maps whole: 8 bytes per
  // 4 KiB page, in pid 1 while it loads a profile (the RAM window) and in the process for a crash
  // (the crash's snapshot in an arena, or the RAM): 32 MiB each for 16 GiB.
  std::uint64_t mib = 160 + 3 * ((payload_bytes + (1 << 20) - 1) >> 20) + 2 * ((guest_ram_bytes / 512 + (1 << 20) - 1) >> 20);
  return (mib + 15) / 16 * 16 << 20;
}

std::uint64_t shared_repair_vm_memory(std::uint64_t payload_bytes, std::uint64_t guest_ram_bytes) {
  // A VM of one guest's room, and more for each further slot: what one slot's agent holds loaded
  // (8-13 MiB measured, a 10 MiB payload read in place) and its load's peak (13 MiB) twice over,
  // and more for larger payloads and windows as for a VM of one guest. Not the whole of a VM of one
  // guest per slot: each MiB of RAM costs 16 KiB of struct page, written at the VM's boot (656 MiB
  // for eight slots kept 37 MiB of its RAM resident with one guest; 432 MiB, 31 MiB).
  const std::uint64_t one = repair_vm_memory(payload_bytes, guest_ram_bytes);
  const std::uint64_t per_slot = std::max<std::uint64_t>(32ull << 20, one > (176ull << 20) ? one - (176ull << 20) : 0);
  return one + (kSharedSlots - 1) * per_slot;
}

RepairBroker::RepairBroker(RepairSettings settings, RepairVm::Factory factory, MachineConfig vm_config, std::string dir,
                           Say say, Event event)
    : settings_(std::move(settings)), factory_(std::move(factory)), vm_config_(std::move(vm_config)), dir_(std::move(dir)),
      say_(std::move(say)), event_(std::move(event)) {
  std::filesystem::create_directories(dir_);
}

RepairBroker::~RepairBroker() = default;

bool RepairBroker::vm_needs_ram_window(std::uint64_t guest_ram) const {
  if (!settings_.load_snapshot || !settings_.arena_windows) return true;
  try {
    return !RepairVm::reads_only_snapshots(settings_.arena_windows(guest_ram), settings_.load_snapshot);
  } catch (const std::exception&) {
    return true;
  }
}

void RepairBroker::rebuild(const std::string& profile_dir, const repair::HealthyImage& healthy, const Machine::RamFile& ram) {
  auto t0 = Clock::now();
  // A repair VM that is up takes the new profile in place (its agent loads it in about a second)
  // instead of booting again (seconds under TCG): the payload goes into the window's other slot.
  // What the host's files hold of this kernel's profile stays out of the payload.
  const PayloadKernelPart part = payload_kernel_part();
  if (image_ && vm_.worker && ram.fd == ram_.fd && ram.size == ram_.size && vm_.worker->state() == WorkerState::ready &&
      rewrite_repair_payload(*image_, profile_dir, healthy, ram, part) && serve(vm_windows_, image_->from_host) &&
      vm_.worker->reload(image_->payload_offset, image_->payload_bytes)) {
    healthy_ = healthy_in_payload(*image_);
    vm_.reported.clear();  // its next ready is announced
    inline_.worker.reset();
    inline_.failures = 0;
    nlohmann::json e = image_json();
    e.update({{"regions", healthy.regions.size()}, {"build_ms", ms_since(t0)}, {"reload", "the running repair VM loads it in place"}});
    event_("repair-image", e);
    if (settings_.cross_check) start(inline_);
    return;
  }
  // The old workers hold the old profile: they go first. So does the healthy copy read from the
  // old payload, whose slot a failed reload above may have given back already.
  healthy_.reset();
  vm_.worker.reset();
  inline_.worker.reset();
  vm_.failures = inline_.failures = 0;
  std::string agent = find_repair_agent(settings_.agent);
  image_ = build_repair_image(dir_, settings_.shared_dir, agent, profile_dir, healthy, ram, part);
  healthy_ = healthy_in_payload(*image_);
  ram_ = ram;
  nlohmann::json e = image_json();
  e.update({{"regions", healthy.regions.size()}, {"build_ms", ms_since(t0)}});
  event_("repair-image", e);
  if (settings_.mode == "vm" && !std::has_single_bit(ram.size) && vm_needs_ram_window(ram.size)) {
    // A PCI window (ivshmem's BAR) is a power of two and QEMU maps a backend from its start: a
    // repair VM cannot see this guest's RAM whole. That does not change: analyse inline. (A VM
    // that reads only snapshots in the host's arenas, sparse windows of a power of two, does
    // not need it.)
    std::string why = fmt::format("guest RAM of {} MiB is not a power of two, which the repair VM's window onto it needs "
                                  "(it has no snapshot arenas to read the guest from instead)",
                                  ram.size >> 20);
    say_("crashes are analysed inline (a sandboxed host process): " + why);
    event_("repair-mode", {{"mode", "inline"}, {"instead_of", "vm"}, {"why", why}});
    settings_.mode = "inline";
  }
  start(settings_.mode == "vm" ? vm_ : inline_);
  if (settings_.cross_check) start(settings_.mode == "vm" ? inline_ : vm_);
}

nlohmann::json RepairBroker::image_json() const {
  nlohmann::json j = {{"initrd", image_->initrd}, {"initrd_shared", image_->initrd_file.held()},
                      {"bytes", image_->initrd_bytes + image_->payload_bytes}, {"initrd_bytes", image_->initrd_bytes},
                      {"payload_bytes", image_->payload_bytes}, {"window_bytes", image_->window_bytes},
                      {"healthy_bytes", healthy_ ? healthy_->total_bytes() : 0}};
  if (!image_->initrd_problem.empty()) j["initrd_not_shared"] = image_->initrd_problem;
  // The guest's own part of the profile: what it leaves to the host's files, and why it keeps the rest.
  j["kernel_parts_from_host"] = image_->from_host.names;
  if (!image_->from_host.kept_why.empty()) j["kernel_parts_kept"] = image_->from_host.kept_why;
  return j;
}

HostKernelFiles RepairBroker::host_kernel_files() const {
  HostKernelFiles files;
  if (settings_.shared_dir.empty()) return files;
  try {
    if (auto block = settings_.image_symbols ? settings_.image_symbols() : nullptr) {
      std::uint64_t bytes = 0;
      if (UniqueFd fd = open_host_kernel_file(settings_.shared_dir + "/" + image_symbols_file_name(block->digest()),
                                              block->bytes().size(), bytes))
        files.symbols = KernelFileWindow{std::move(fd), bytes, block, block->digest(), block->bytes().size()};  // the block holds the file's lock
    }
    auto window_onto = [](const std::function<std::optional<SharedFileRef>()>& held) -> std::optional<KernelFileWindow> {
      auto ref = held ? held() : std::nullopt;
      std::uint64_t bytes = 0;
      UniqueFd fd = ref ? open_host_kernel_file(ref->path, ref->bytes, bytes) : UniqueFd();
      if (!fd) return std::nullopt;
      return KernelFileWindow{std::move(fd), bytes, ref->keeper, ref->digest, ref->bytes};
    };
    files.types = window_onto(settings_.kernel_btf);
    files.unwind = window_onto(settings_.kernel_unwind);
  } catch (const std::exception&) {
    // No profile to read them from yet: the agent keeps its own.
  }
  return files;
}

PayloadKernelPart RepairBroker::payload_kernel_part() const {
  PayloadKernelPart part;
  HostKernelFiles files = host_kernel_files();
  if (files.symbols && settings_.image_base) {
    part.symbols = std::static_pointer_cast<const ImageSymbols>(files.symbols->keeper);
    part.symbols_base = settings_.image_base();
  }
  if (files.types) {
    part.btf_digest = files.types->digest;
    part.btf_bytes = files.types->length;
  }
  if (files.unwind) {
    part.orc_digest = files.unwind->digest;
    part.orc_bytes = files.unwind->length;
  }
  return part;
}

void RepairBroker::start(Slot& slot) {
  if (!image_) return;
  slot.worker.reset();
  slot.reported.clear();
  try {
    // The payload leaves parts of the profile to the host's files: a worker is given those files.
    HostKernelFiles files = host_kernel_files();
    if (!serve(digests_of(files), image_->from_host))
      fail(ExitCode::failure, "the host's kernel files are not those the repair payload was built with (a new profile "
                              "is on its way)");
    if (slot.mode == "vm") {
      MachineConfig c = vm_config_;
      c.initrd = image_->initrd;
      if (!c.memory_bytes) c.memory_bytes = repair_vm_memory(image_->payload_bytes, ram_.size);
      c.runtime_dir = dir_ + "/vm";
      std::filesystem::create_directories(c.runtime_dir);
      c.console_log = c.runtime_dir + "/console.log";
      std::vector<ArenaWindow> arenas;
      if (settings_.arena_windows) {
        try {
          arenas = settings_.arena_windows(ram_.size);
        } catch (const std::exception& e) {
          say_(std::string("the repair VM sees the guest's RAM (no snapshot arenas for it): ") + e.what());
        }
      }
      vm_windows_ = digests_of(files);
      if (settings_.vm_shared && RepairVm::reads_only_snapshots(arenas, settings_.load_snapshot)) {
        try {
          MachineConfig sc = c;  // its own directory, not this instance's
          sc.runtime_dir.clear();
          sc.console_log.clear();
          if (!vm_config_.memory_bytes) sc.memory_bytes = shared_repair_vm_memory(image_->payload_bytes, ram_.size);
          auto shared = std::make_unique<SharedRepairVm>(factory_, sc, settings_.shared_dir, image_->payload.get(),
                                                         image_->window_bytes, arenas, std::move(files), settings_.load_snapshot,
                                                         PayloadPlace{image_->payload_offset, image_->payload_bytes});
          // The image keeps its payload in the slot from now on: one copy of it on the host.
          healthy_.reset();
          image_->payload = shared->take_payload();
          healthy_ = healthy_in_payload(*image_);
          slot.worker = std::move(shared);
          event_("repair-starting", {{"mode", slot.mode}, {"shared", true}});
          return;
        } catch (const std::exception& e) {
          say_(std::string("the guest gets a repair VM of its own: the shared one cannot serve it: ") + e.what());
          files = host_kernel_files();
        }
      }
      slot.worker = std::make_unique<RepairVm>(factory_, c, ram_, image_->payload.get(), image_->window_bytes,
                                               find_repair_agent(settings_.agent), arenas, std::move(files),
                                               settings_.load_snapshot, PayloadPlace{image_->payload_offset, image_->payload_bytes});
    } else {
      slot.worker = std::make_unique<InlineRepair>(find_repair_agent(settings_.agent), image_->payload.get(), image_->payload_offset, ram_,
                                                   dir_ + "/inline.log", std::move(files));
    }
    event_("repair-starting", {{"mode", slot.mode}});
  } catch (const std::exception& e) {
    slot.worker.reset();
    note_failure(slot);
    slot.reported = "failed";
    event_("repair-failed", {{"mode", slot.mode}, {"error", e.what()}});
    say_(fmt::format("the {} repair worker cannot start: {}", slot.mode, e.what()));
  }
}

void RepairBroker::watch(Slot& slot) {
  if (!slot.worker) {
    bool wanted = slot.mode == settings_.mode || settings_.cross_check;
    if (wanted && image_ && slot.failures && Clock::now() >= slot.retry_at) start(slot);
    return;
  }
  WorkerState s = slot.worker->state();
  std::string name = to_string(s);
  if (name == slot.reported) return;
  slot.reported = name;
  if (s == WorkerState::ready) {
    slot.failures = 0;
    event_("repair-ready", {{"mode", slot.mode}, {"start_ms", slot.worker->start_ms()}, {"agent", slot.worker->status()}});
    say_(fmt::format("repair {} ready in {:.0f} ms ({})", slot.mode, slot.worker->start_ms(), slot.worker->status()));
  } else if (s == WorkerState::failed) {
    event_("repair-failed", {{"mode", slot.mode}, {"error", slot.worker->status()}});
    say_(fmt::format("the {} repair worker failed: {}", slot.mode, slot.worker->status()));
    slot.worker.reset();
    note_failure(slot);
  }
}

void RepairBroker::poll() {
  watch(vm_);
  watch(inline_);
}

bool RepairBroker::answer_from(Slot& slot, const Texts& request, RepairAnswer& out, bool wait_for_start) {
  auto t0 = Clock::now();
  Deadline deadline = Deadline::in(settings_.timeout);
  if (!slot.worker && wait_for_start) start(slot);
  if (!slot.worker) {
    out.fallbacks.push_back(fmt::format("{}: not running", slot.mode));
    return false;
  }
  while (slot.worker->state() == WorkerState::starting) {
    if (!wait_for_start || deadline.expired()) {
      out.fallbacks.push_back(fmt::format("{}: still starting", slot.mode));
      return false;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  if (slot.worker->state() != WorkerState::ready) {
    out.fallbacks.push_back(fmt::format("{}: {}", slot.mode, slot.worker->status()));
    watch(slot);
    return false;
  }
  std::string text;
  try {
    // The snapshot only for a worker that reads it; any other reads the stopped guest's RAM.
    bool snapshot = slot.worker->reads_snapshots() && !request.with_snapshot.empty();
    text = slot.worker->analyse(snapshot ? request.with_snapshot : request.plain, Deadline::in(settings_.timeout),
                                snapshot ? request.index : std::string_view());
  } catch (const Error& e) {
    out.fallbacks.push_back(fmt::format("{}: {}", slot.mode, e.what()));
    watch(slot);
    return false;
  }
  out.round_trip_ms = ms_since(t0);
  return read_repair_answer(text, slot.mode, out);
}

bool RepairBroker::reads_snapshots() {
  Slot& primary = settings_.mode == "vm" ? vm_ : inline_;
  return primary.worker && primary.worker->reads_snapshots() && primary.worker->state() == WorkerState::ready;
}

RepairBroker::Slot* RepairBroker::other_slot(const std::string& mode) { return mode == "vm" ? &inline_ : &vm_; }

RepairAnswer RepairBroker::analyse(const repair::RepairRequest& request) {
  RepairAnswer answer;
  Texts text;
  nlohmann::json j = request.to_json();
  if (request.snapshot) {
    text.with_snapshot = j.dump();
    text.index = request.snapshot_index;
    j.erase("snapshot");
  }
  text.plain = j.dump();
  Slot& primary = settings_.mode == "vm" ? vm_ : inline_;
  // The inline process starts in about a second: worth waiting for; the repair VM takes several.
  bool answered = answer_from(primary, text, answer, primary.mode == "inline");
  if (!answered && settings_.fallback == "inline" && primary.mode != "inline") {
    event_("repair-fallback", {{"crash", request.record.id}, {"from", primary.mode}, {"to", "inline"},
                               {"why", answer.fallbacks.empty() ? "" : answer.fallbacks.back()}});
    answered = answer_from(inline_, text, answer, true);
  } else if (!answered) {
    event_("repair-fallback", {{"crash", request.record.id}, {"from", primary.mode}, {"to", "reboot"},
                               {"why", answer.fallbacks.empty() ? "" : answer.fallbacks.back()}});
  }
  if (!answered) {
    answer.ok = false;
    answer.error = fmt::format("no repair engine answered ({})", fmt::join(answer.fallbacks, "; "));
    return answer;
  }
  if (settings_.cross_check && answer.ok) {
    RepairAnswer other;
    Slot* slot = other_slot(answer.mode);
    if (answer_from(*slot, text, other, true) && other.ok) {
      bool same_analysis = other.analysis == answer.analysis, same_plan = other.plan.to_json() == answer.plan.to_json();
      answer.cross_check = {{"mode", slot->mode}, {"identical", same_analysis && same_plan}, {"engine_ms", other.engine_ms},
                            {"round_trip_ms", other.round_trip_ms}};
      if (!same_analysis) answer.cross_check["analysis"] = other.analysis;
      if (!same_plan) answer.cross_check["plan"] = other.plan.to_json();
    } else {
      answer.cross_check = {{"mode", slot->mode}, {"identical", nullptr},
                            {"error", other.error.empty() ? fmt::format("{}", fmt::join(other.fallbacks, "; ")) : other.error}};
    }
  }
  return answer;
}

nlohmann::json RepairBroker::status() {
  nlohmann::json j = {{"mode", settings_.mode}, {"fallback", settings_.fallback}, {"timeout_ms", settings_.timeout.count()}};
  if (image_) j["image"] = image_json();
  for (Slot* s : {&vm_, &inline_}) {
    if (!s->worker) {
      if (s->failures) j[s->mode] = {{"state", "failed"}, {"failures", s->failures}};
      continue;
    }
    j[s->mode] = {{"state", to_string(s->worker->state())}, {"agent", s->worker->status()}, {"pid", s->worker->process_id()},
                  {"start_ms", s->worker->start_ms()}};
    s->worker->describe(j[s->mode]);
  }
  return j;
}

}  // namespace immortal::vmm
