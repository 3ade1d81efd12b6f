#include "repair/repair_vm.h"

#include "base/clock.h"
#include "base/error.h"
#include "repair/agent_process.h"
#include "repair/repair_vm_trim.h"
#include "engine/repair_service.h"

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <fcntl.h>
#include <malloc.h>
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <bit>
#include <optional>
#include <thread>

namespace immortal::vmm {

namespace {

constexpr auto kBootLimit = std::chrono::seconds(120);
using repair::kFirstArenaSlot, repair::kGuestRamSlot, repair::kMailboxSlot, repair::kPayloadSlot, repair::kSymbolsSlot,
    repair::kTypesSlot, repair::kUnwindSlot;

std::uint64_t mailbox_bytes(std::uint64_t guest_ram, bool snapshots) { return repair_mailbox_bytes(guest_ram, snapshots); }

}  // namespace

std::uint64_t repair_mailbox_bytes(std::uint64_t guest_ram, bool snapshots) {
  if (!snapshots) return repair::kMailboxSize;
  return std::bit_ceil(repair::kMailboxSize + guest_ram / 1024 + (64 << 10));
}

void add_common_windows(MachineConfig& config, const std::vector<UniqueFd>& arenas, const std::vector<ArenaWindow>& sizes,
                        const HostKernelFiles& files) {
  for (std::size_t i = 0; i < arenas.size(); ++i)
    config.shared_windows.push_back({fmt::format("snapshot-arena-{}", i), arenas[i].get(), sizes[i].bytes, true,
                                     kFirstArenaSlot + static_cast<int>(i)});
  if (const auto& f = files.symbols) config.shared_windows.push_back({"kernel-symbols", f->fd.get(), f->bytes, true, kSymbolsSlot});
  if (const auto& f = files.types) config.shared_windows.push_back({"kernel-btf", f->fd.get(), f->bytes, true, kTypesSlot});
  if (const auto& f = files.unwind) config.shared_windows.push_back({"kernel-orc", f->fd.get(), f->bytes, true, kUnwindSlot});
}

RepairVm::RepairVm(const Factory& factory, MachineConfig config, const Machine::RamFile& guest_ram, int payload,
                   std::uint64_t window_bytes, std::string agent, const std::vector<ArenaWindow>& arenas,
                   HostKernelFiles kernel_files, LoadSnapshot load_snapshot, PayloadPlace place)
    : mailbox_(mailbox_bytes(guest_ram.size, !arenas.empty())), kernel_files_(std::move(kernel_files)), agent_(std::move(agent)),
      kernel_(config.kernel) {
  payload_ = reopen_read_only(payload);
  if (!payload_) fail_os(ExitCode::failure, "reopen the repair payload read-only for the repair VM", errno);
  config.shared_windows = {{"repair-mailbox", mailbox_.fd(), mailbox_.bytes(), false, kMailboxSlot},
                           {"repair-payload", payload_.get(), window_bytes, true, kPayloadSlot}};
  if (reads_only_snapshots(arenas, load_snapshot)) {
    // Nothing of the guest but its snapshots, which the host takes for it: the first load waits
    // until the agent is up and asks for it (check_boot()).
    take_snapshot_ = std::move(load_snapshot);
    load_pending_ = place;
  } else {
    if (!std::has_single_bit(guest_ram.size))
      fail(ExitCode::failure, "guest RAM of {} MiB is not a power of two: a PCI window cannot show it whole",
           guest_ram.size >> 20);
    // The window is mapped read-only (readonly=on), and the descriptor QEMU inherits is a
    // read-only one too, as the inline agent's.
    guest_ram_ = reopen_read_only(guest_ram.fd);
    if (!guest_ram_) fail_os(ExitCode::failure, "reopen guest RAM read-only for the repair VM", errno);
    config.shared_windows.push_back({"peer-ram", guest_ram_.get(), guest_ram.size, true, kGuestRamSlot});
  }
  // The host pool's arenas, read-only: a crash's snapshot is in one of them while its request is
  // analysed. The VM's agent lets the process analysing a crash map only that one, then drops
  // its right to open any other (agent/repair_agent.cc): the other may hold another guest's.
  for (const auto& a : arenas) {
    UniqueFd fd = reopen_read_only(a.fd);
    if (!fd) fail_os(ExitCode::failure, "reopen a snapshot arena read-only for the repair VM", errno);
    arenas_.push_back(std::move(fd));
  }
  // The kernel's files always in their own slots, whether or not the arenas are there.
  add_common_windows(config, arenas_, arenas, kernel_files_);
  machine_ = factory(config, Deadline::in(std::chrono::seconds(30)));
  resume_vm();
}

RepairVm::~RepairVm() {
  {
    std::lock_guard lock(vm_mutex_);
    ++runs_;  // a trim in flight punches nothing now
  }
  if (trim_.joinable()) trim_.join();
  if (machine_) machine_->terminate(std::chrono::milliseconds(0));
}

void RepairVm::resume_vm() {
  std::lock_guard lock(vm_mutex_);
  ++runs_;
  machine_->resume();
}

void RepairVm::start_trim() {
  const auto where = mailbox_.box().agent_vmcoreinfo();
  const std::uint64_t paddr = where.first;
  const std::uint32_t size = where.second;
  if (trimming_.exchange(true)) return;  // one at a time
  if (trim_.joinable()) trim_.join();  // the last one, finished
  std::uint64_t runs;
  {
    std::lock_guard lock(vm_mutex_);
    runs = runs_;
    trim_after_.reset();  // this pass is the one that was due
  }
  trim_ = std::thread([this, paddr, size, runs] {
    // Beside the guest and a recovery's checks, not ahead of them (the page-class agent it
    // starts inherits this).
    ::setpriority(PRIO_PROCESS, static_cast<id_t>(::gettid()), 10);
    auto t0 = Clock::now();
    nlohmann::json result;
    try {
      // Its free pages by its own kernel's account, when that kernel describes itself (symbols and
      // BTF in its memory: a distribution kernel). The small repair kernel does not; its free
      // pages are zeros (init_on_free) and go back with the other all-zero pages below.
      std::optional<RamClasses> classes;
      std::string classes_error;
      if (!paddr) classes_error = "the repair agent did not say where its kernel's VMCOREINFO is";
      else if (agent_.empty()) classes_error = "no page-class agent";
      else {
        try {
          classes = repair_vm_free_pages(agent_, *machine_, paddr, size, Deadline::in(std::chrono::seconds(10)));
        } catch (const std::exception& e) {
          classes_error = e.what();
        }
      }
      auto ram = machine_->ram_file();
      if (!ram) fail(ExitCode::unsupported, "the repair VM's RAM is not in a file");
      auto zero_runs = zero_page_runs(*ram);
      std::uint64_t zero = 0;
      for (const auto& [offset, bytes] : zero_runs) zero += bytes;
      std::lock_guard lock(vm_mutex_);
      if (runs_ != runs) {
        result = {{"skipped", "the repair VM ran again before its free pages were given back"}};
        trim_after_ = Clock::now() + kTrimRetry;  // once the crash that ran it is over
      } else {
        std::uint64_t given = punch_free_pages(*ram, classes ? *classes : RamClasses{}, zero_runs);
        result = {{"zero_bytes", zero}, {"given_back_bytes", given}};
        if (classes) {
          std::array<std::uint64_t, kPageClassCount> pages{};
          for (const auto& [r, c] : *classes)
            for (PageClass k : c) ++pages[static_cast<std::size_t>(k)];
          // What the repair VM's RAM holds, as its own kernel sees it (where its host memory goes:
          // docs/benchmarks.md, footprint); zero pages of any class are given back too.
          nlohmann::json held = nlohmann::json::object();
          for (PageClass k : {PageClass::kernel, PageClass::user, PageClass::cache})
            held[to_string(k)] = pages[static_cast<std::size_t>(k)] * MemorySnapshot::kPageSize;
          result["free_bytes"] = pages[static_cast<std::size_t>(PageClass::free)] * MemorySnapshot::kPageSize;
          result["class_bytes"] = held;
        } else {
          result["classes_unread"] = classes_error;
        }
      }
    } catch (const std::exception& e) {
      result = {{"error", e.what()}};
    }
    // The repair kernel's symbols and types were read for this and are gone: hand their heap
    // back too (glibc keeps freed memory in this thread's arena otherwise: ≈ 28 MiB measured).
    ::malloc_trim(0);
    result["ms"] = ms_since(t0);
    {
      std::lock_guard lock(trim_mutex_);
      result["times"] = (trim_result_.is_object() ? trim_result_.value("times", 0) : 0) + 1;
      trim_result_ = std::move(result);
    }
    trimming_ = false;
  });
}

void RepairVm::describe(nlohmann::json& into) const {
  into["kernel"] = kernel_;
  into["guest_ram_window"] = sees_guest_ram();
  if (!last_load_.is_null()) into["load"] = last_load_;
  std::lock_guard lock(trim_mutex_);
  if (!trim_result_.is_null()) into["free_pages_given_back"] = trim_result_;
}

void RepairVm::fail_with(const std::string& why) {
  state_ = WorkerState::failed;
  status_ = why;
  if (machine_) machine_->terminate(std::chrono::milliseconds(0));
}

bool RepairVm::machine_gone() {
  try {
    for (const auto& e : machine_->drain_events())
      if (e.kind == MachineEvent::Kind::shutdown || e.kind == MachineEvent::Kind::reset ||
          e.kind == MachineEvent::Kind::guest_panicked)
        return true;
    return machine_->state() == RunState::shutdown;
  } catch (const std::exception&) {
    return true;
  }
}

WorkerState RepairVm::refresh_state() {
  if (state_ == WorkerState::starting) {
    if (reload_seq_) check_reload();
    else if (load_pending_ && load_resumes_) {
      // A reload waiting for its snapshot (the VM paused meanwhile), no longer than a boot.
      if (!post_load() && Clock::now() - started_ > kBootLimit)
        fail_with(fmt::format("no snapshot of the guest to load its new profile from after {} s: {}", kBootLimit.count(), status_));
    } else check_boot();
    return state_;
  }
  if (state_ != WorkerState::failed && machine_gone()) fail_with("the repair VM is gone");
  if (state_ == WorkerState::ready && settling()) settle();
  return state_;
}

void RepairVm::settle() {
  if (settle_at_) {
    if (Clock::now() < *settle_at_) return;
    settle_at_.reset();
    try {
      resume_vm();
    } catch (const std::exception& e) {
      return fail_with(std::string("cannot resume the repair VM: ") + e.what());
    }
    settling_until_ = Clock::now() + kSettleLimit;
  }
  auto s = mailbox_.box().agent_state();
  bool late = Clock::now() >= *settling_until_;
  if (s != repair::AgentState::ready && s != repair::AgentState::failed && !late) return;
  settling_until_.reset();
  {
    // No trim after an analysis (docs/recovery.md, 7): the next one would fault the same pages in.
    std::lock_guard lock(vm_mutex_);
    machine_->pause();
  }
  if (s == repair::AgentState::failed)
    fail_with("the repair agent in the repair VM failed after an answer: " + mailbox_.box().agent_status());
  else if (late)
    fail_with(fmt::format("the repair agent was not ready for the next crash {} s after its answer",
                          std::chrono::duration_cast<std::chrono::seconds>(kSettleLimit).count()));
}

WorkerState RepairVm::state() {
  // A crash cut the last trim short: it goes again once that crash is over. Here, on the
  // broker's tick, not on the way into an analysis or a reload (which would cut it short again).
  if (refresh_state() == WorkerState::ready) {
    bool due;
    {
      std::lock_guard lock(vm_mutex_);
      // Never while it runs to settle after an answer: a trim reads pages as free while paused.
      due = trim_after_ && Clock::now() >= *trim_after_ && !settling();
    }
    if (due) start_trim();  // one still running: the next tick
  }
  return state_;
}

void RepairVm::become_ready() {
  {
    std::lock_guard lock(vm_mutex_);
    machine_->pause();  // hot standby: costs nothing until a crash
  }
  state_ = WorkerState::ready;
  status_ = mailbox_.box().agent_status();
  start_ms_ = ms_since(started_);
  start_trim();
}

void RepairVm::check_boot() {
  auto s = mailbox_.box().agent_state();
  if (s == repair::AgentState::waiting && load_pending_ && (post_load() || state_ == WorkerState::failed)) return;
  if (s == repair::AgentState::ready) become_ready();
  else if (s == repair::AgentState::failed)
    fail_with("the repair agent in the repair VM failed: " + mailbox_.box().agent_status());
  else if (Clock::now() - started_ > kBootLimit)
    fail_with(fmt::format("the repair VM was not ready after {} s", kBootLimit.count()));
  else if (machine_gone()) fail_with("the repair VM stopped while booting");
}

// A reload is over when the agent answers it (its state word says "ready" before it has even
// seen the request).
void RepairVm::check_reload() {
  std::optional<std::string> answer;
  try {
    answer = mailbox_.box().take_response(reload_seq_);
  } catch (const std::runtime_error& e) {
    return fail_with(e.what());
  }
  if (!answer) {
    if (Clock::now() - started_ > kBootLimit)
      fail_with(fmt::format("the repair VM had not loaded the new profile after {} s", kBootLimit.count()));
    else if (machine_gone()) fail_with("the repair VM stopped while loading a new profile");
    return;
  }
  reload_seq_ = 0;
  if (load_snapshot_) {
    load_snapshot_.reset();  // its arena goes back to the pool
    mailbox_.clear_attachment();
    last_load_["ms"] = ms_since(load_posted_);
  }
  if (auto why = load_refused(*answer)) return fail_with("the repair agent could not load the new profile: " + *why);
  become_ready();
}

bool RepairVm::reload(std::uint64_t offset, std::uint64_t size) {
  if (refresh_state() != WorkerState::ready) return false;
  stop_settling();
  state_ = WorkerState::starting;
  status_ = "loading a new profile";
  started_ = Clock::now();
  start_ms_ = 0;
  if (take_snapshot_) {
    load_pending_ = PayloadPlace{offset, size};
    load_resumes_ = true;  // paused while ready
    post_load();
    return true;
  }
  reload_seq_ = mailbox_.box().post_request(nlohmann::json{{"reload", {{"offset", offset}, {"size", size}}}}.dump());
  try {
    resume_vm();
  } catch (const std::exception& e) {
    fail_with(std::string("cannot resume the repair VM: ") + e.what());
  }
  return true;
}

std::optional<PostedLoad> post_load_from_snapshot(repair::Mailbox& box, const LoadSnapshot& take, PayloadPlace place) {
  auto t0 = Clock::now();
  PostedLoad load;
  try {
    load.snapshot = take();
  } catch (const std::exception& e) {
    fail(ExitCode::failure, "no snapshot of the guest to load its profile from: {}", e.what());
  }
  if (!load.snapshot) return std::nullopt;
  double snapshot_ms = ms_since(t0);
  repair::SnapshotRef ref{load.snapshot->pool_slot(), load.snapshot->pages_bytes(), load.snapshot->index().size()};
  nlohmann::json request = {{"reload", {{"offset", place.offset}, {"size", place.bytes}}}, {"snapshot", repair::to_json(ref)}};
  try {
    load.seq = box.post_request(request.dump(), load.snapshot->index());
  } catch (const std::runtime_error& e) {
    fail(ExitCode::failure, "cannot post the load to the repair VM: {}", e.what());
  }
  load.described = {{"read", "a snapshot of the guest"}, {"arena", ref.arena},
                    {"pages", ref.pages_bytes / MemorySnapshot::kPageSize}, {"snapshot_ms", snapshot_ms}};
  return load;
}

std::optional<std::string> load_refused(const std::string& answer) {
  auto j = nlohmann::json::parse(answer, nullptr, false);
  if (!j.is_object()) return "its answer is not JSON";
  if (j.value("ok", false)) return std::nullopt;
  return j.value("error", std::string("no reason given"));
}

bool RepairVm::post_load() {
  std::optional<PostedLoad> load;
  try {
    load = post_load_from_snapshot(mailbox_.box(), take_snapshot_, *load_pending_);
  } catch (const std::exception& e) {
    fail_with(e.what());
    return false;
  }
  if (!load) {
    status_ = "waiting for a snapshot of the guest to load its profile from (the page classes, or a free arena)";
    return false;
  }
  reload_seq_ = load->seq;
  last_load_ = std::move(load->described);
  load_snapshot_ = std::move(load->snapshot);
  load_posted_ = Clock::now();
  load_pending_.reset();
  status_ = "loading the profile from a snapshot of the guest";
  if (std::exchange(load_resumes_, false)) {
    try {
      resume_vm();
    } catch (const std::exception& e) {
      fail_with(std::string("cannot resume the repair VM: ") + e.what());
      return false;
    }
  }
  return true;
}

std::string RepairVm::analyse(const std::string& request, Deadline deadline, std::string_view attachment) {
  if (refresh_state() != WorkerState::ready) fail(ExitCode::failure, "the repair VM is not ready: {}", status_);
  if (attachment.empty() && !sees_guest_ram())
    fail(ExitCode::failure, "the crash's snapshot is not in the host's arenas, and the repair VM reads nothing else of the guest");
  // Its agent not settled since the last answer (a crash right after another): it takes this one
  // once it has forked the process for it.
  stop_settling();
  std::uint64_t seq = 0;
  try {
    seq = mailbox_.box().post_request(request, attachment);
  } catch (const std::runtime_error& e) {
    fail(ExitCode::failure, "cannot post the request to the repair VM: {}", e.what());
  }
  resume_vm();
  for (;;) {
    std::optional<std::string> answer;
    try {
      answer = mailbox_.box().take_response(seq);
    } catch (const std::runtime_error& e) {
      fail_with(e.what());
      throw Error(ExitCode::failure, e.what());
    }
    if (answer) {
      {
        std::lock_guard lock(vm_mutex_);
        machine_->pause();
      }
      if (!attachment.empty()) mailbox_.clear_attachment();
      // An agent that analyses each crash in a fresh process says "ready" once the next one is
      // forked: it gets the time to, later (settle()). One that serves in one process is ready.
      if (mailbox_.box().agent_state() != repair::AgentState::ready) settle_at_ = Clock::now() + kSettleDelay;
      return *answer;
    }
    if (deadline.expired()) {
      fail_with("the repair VM did not answer in time (stopped)");
      fail(ExitCode::timeout, "{}", status_);
    }
    std::this_thread::sleep_for(std::chrono::microseconds(100));
  }
}

}  // namespace immortal::vmm
