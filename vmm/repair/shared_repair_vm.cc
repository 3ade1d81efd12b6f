#include "repair/shared_repair_vm.h"

#include "base/clock.h"
#include "base/content_digest.h"
#include "base/error.h"
#include "engine/repair_service.h"

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <fcntl.h>
#include <sys/file.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>

#include <csignal>
#include <filesystem>
#include <fstream>
#include <optional>
#include <sstream>
#include <thread>

namespace immortal::vmm {

namespace {

namespace fs = std::filesystem;

constexpr auto kLoadLimit = std::chrono::seconds(120);

UniqueFd open_file(const std::string& path, int flags) {
  UniqueFd fd(::open(path.c_str(), flags | O_CLOEXEC | O_NOFOLLOW, 0600));
  if (!fd) fail_os(ExitCode::failure, "open " + path, errno);
  return fd;
}

void lock_file(const UniqueFd& fd, const std::string& what) {
  while (::flock(fd.get(), LOCK_EX) != 0)
    if (errno != EINTR) fail_os(ExitCode::failure, "lock " + what, errno);
}

// A process's start time (/proc/PID/stat, field 22) and whether it is still alive (not a zombie);
// 0 when it is gone.
std::uint64_t live_process_start(int pid) {
  if (pid <= 0) return 0;
  std::ifstream in("/proc/" + std::to_string(pid) + "/stat");
  std::string text((std::istreambuf_iterator<char>(in)), {});
  auto close = text.rfind(')');
  if (close == std::string::npos) return 0;
  std::istringstream rest(text.substr(close + 2));
  std::string state;
  rest >> state;
  if (state == "Z" || state == "X") return 0;
  std::string field;
  for (int i = 4; i < 22 && rest >> field; ++i) {
  }
  std::uint64_t start = 0;
  rest >> start;
  return start;
}

std::uint64_t new_session() {
  std::uint64_t s = 0;
  while (s == 0)
    if (::getrandom(&s, sizeof s, 0) != sizeof s) s = static_cast<std::uint64_t>(Clock::now().time_since_epoch().count());
  return s;
}

// A slot's file holds nothing of its last user: its pages go back, and it reads as zeros.
void empty_file(int fd, std::uint64_t bytes) {
  if (::ftruncate(fd, static_cast<off_t>(bytes)) != 0) fail_os(ExitCode::failure, "size a shared repair VM slot's file", errno);
  (void)::fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 0, static_cast<off_t>(bytes));
}

// How many slots of the VM in dir are taken (their locks held by supervisors, this one's too).
int slots_taken(const std::string& dir) {
  int taken = 0;
  for (int k = 0; k < kSharedSlots; ++k) {
    UniqueFd fd(::open(fmt::format("{}/slot-{}.lock", dir, k).c_str(), O_RDWR | O_CLOEXEC | O_NOFOLLOW));
    if (fd && ::flock(fd.get(), LOCK_EX | LOCK_NB) != 0) ++taken;
  }
  return taken;
}

// The pid and start time vm.json names, when that process still runs.
std::optional<std::pair<int, std::uint64_t>> live_vm(const std::string& dir) {
  auto j = nlohmann::json::parse(std::ifstream(dir + "/vm.json"), nullptr, false);
  if (!j.is_object()) return std::nullopt;
  int pid = j.value("pid", 0);
  std::uint64_t start = j.value("start_time", std::uint64_t{0});
  if (!start || live_process_start(pid) != start) return std::nullopt;
  return std::make_pair(pid, start);
}

// Shared VMs nobody uses any more (an agent or kernel that changed since, or every supervisor of
// theirs killed): ended, each under its lock. Those of other keys are removed too; an instance of
// our own key keeps its directory (a supervisor may be about to join it: it is where the next
// guest goes when the earlier ones are full).
void remove_unused_vms(const std::string& shared_dir, const std::string& key, const std::string& keep) {
  std::error_code ec;
  const std::string ours = "repair-vm-" + key + "-";
  for (const auto& e : fs::directory_iterator(shared_dir, ec)) {
    std::string name = e.path().filename().string();
    if (name.rfind("repair-vm-", 0) != 0 || e.path().string() == keep || !e.is_directory(ec) || e.is_symlink(ec)) continue;
    UniqueFd lock(::open((e.path().string() + "/lock").c_str(), O_RDWR | O_CLOEXEC | O_NOFOLLOW));
    if (lock && ::flock(lock.get(), LOCK_EX | LOCK_NB) != 0) continue;  // someone joins or leaves it now
    if (slots_taken(e.path().string()) > 0) continue;
    if (auto vm = live_vm(e.path().string())) ::kill(vm->first, SIGKILL);
    if (name.rfind(ours, 0) == 0) ::unlink((e.path().string() + "/vm.json").c_str());
    else fs::remove_all(e.path(), ec);
  }
}

// The directory's lock, held: a directory another supervisor removed meanwhile (its lock file
// unlinked while we waited for it) is made again.
UniqueFd lock_directory(const std::string& dir) {
  for (int attempt = 0;; ++attempt) {
    fs::create_directories(dir + "/vm");
    fs::permissions(dir, fs::perms::owner_all);
    UniqueFd lock = open_file(dir + "/lock", O_RDWR | O_CREAT);
    lock_file(lock, dir + "/lock");
    struct stat st {};
    if (::fstat(lock.get(), &st) != 0) fail_os(ExitCode::failure, "stat " + dir + "/lock", errno);
    if (st.st_nlink > 0 || attempt == 3) return lock;
  }
}

}  // namespace

SharedRepairVm::SharedRepairVm(const RepairVm::Factory& factory, MachineConfig config, const std::string& shared_dir,
                               int payload, std::uint64_t window_bytes,
                               const std::vector<ArenaWindow>& arenas, HostKernelFiles kernel_files,
                               LoadSnapshot load_snapshot, PayloadPlace place)
    : kernel_(config.kernel), kernel_files_(std::move(kernel_files)), take_snapshot_(std::move(load_snapshot)), window_bytes_(window_bytes) {
  if (!RepairVm::reads_only_snapshots(arenas, take_snapshot_))
    fail(ExitCode::unsupported, "a shared repair VM reads guests only from snapshots in the host's arenas, and there are none");
  // Room for the page index of a snapshot as large as an arena's window (the guest's RAM, rounded up).
  const std::uint64_t mailbox_bytes = repair_mailbox_bytes(arenas.front().bytes, true);
  // What the VM is made of: guests whose supervisors would build the same VM share it.
  nlohmann::json made_of = {{"kernel", config.kernel}, {"initrd", config.initrd}, {"append", config.append},
                            {"vcpus", config.vcpus}, {"accel", to_string(config.accelerator)},
                            {"code_cache", config.emulator_code_cache_bytes}, {"backend", config.backend_options},
                            {"payload_window", window_bytes}, {"mailbox", mailbox_bytes}, {"slots", kSharedSlots}};
  for (const auto& a : arenas) {
    struct stat st {};
    if (::fstat(a.fd, &st) != 0) fail_os(ExitCode::failure, "stat a snapshot arena", errno);
    made_of["arenas"].push_back({st.st_dev, st.st_ino, a.bytes});
  }
  for (const auto* f : {&kernel_files_.symbols, &kernel_files_.types, &kernel_files_.unwind})
    made_of["kernel_files"].push_back(*f ? nlohmann::json{(*f)->digest, (*f)->bytes} : nlohmann::json());
  std::string text = made_of.dump();
  key_ = content_digest({reinterpret_cast<const std::uint8_t*>(text.data()), text.size()}).substr(0, 16);
  // The first instance of this key with a free slot; the guests of one kernel fill one VM before
  // the next is started (eight guests per VM: a host with dozens has several).
  UniqueFd lock;
  for (int n = 0; n < kSharedVmsPerKernel && slot_ < 0; ++n) {
    dir_ = fmt::format("{}/repair-vm-{}-{}", shared_dir, key_, n);
    instance_ = n;
    lock = lock_directory(dir_);
    for (int k = 0; k < kSharedSlots && slot_ < 0; ++k) {
      UniqueFd fd = open_file(fmt::format("{}/slot-{}.lock", dir_, k), O_RDWR | O_CREAT);
      if (::flock(fd.get(), LOCK_EX | LOCK_NB) == 0) {
        slot_ = k;
        slot_lock_ = std::move(fd);
      }
    }
  }
  if (slot_ < 0)
    fail(ExitCode::failure, "all {} slots of the {} shared repair VMs of this kernel are taken ({}/repair-vm-{}-*)", kSharedSlots,
         kSharedVmsPerKernel, shared_dir, key_);
  join_or_start(factory, std::move(config), arenas, mailbox_bytes);
  lock.reset();  // joined: the next supervisor may come
  remove_unused_vms(shared_dir, key_, dir_);
  doorbell_ = UniqueFd(::open((dir_ + "/vm/doorbell.in").c_str(), O_WRONLY | O_NONBLOCK | O_CLOEXEC | O_NOFOLLOW));
  if (!doorbell_) fail_os(ExitCode::failure, "open the shared repair VM's doorbell", errno);

  // A new session first: the slot's process of its last user (if it is still there) ends, and a
  // fresh one waits for this guest's load.
  mailbox_ = std::make_unique<MailboxMemory>(open_file(fmt::format("{}/mailbox-{}", dir_, slot_), O_RDWR), mailbox_bytes,
                                             new_session());
  // The slot's payload: this guest's, in place of the last user's.
  payload_ = open_file(fmt::format("{}/payload-{}", dir_, slot_), O_RDWR);
  empty_file(payload_.get(), window_bytes);
  std::vector<char> buffer(1 << 20);
  for (std::uint64_t at = place.offset; at < place.offset + place.bytes;) {
    std::size_t n = std::min<std::uint64_t>(buffer.size(), place.offset + place.bytes - at);
    ssize_t got = ::pread(payload, buffer.data(), n, static_cast<off_t>(at));
    if (got <= 0) fail_os(ExitCode::failure, "read the repair payload", got < 0 ? errno : EIO);
    if (::pwrite(payload_.get(), buffer.data(), static_cast<std::size_t>(got), static_cast<off_t>(at)) != got)
      fail_os(ExitCode::failure, "write the repair payload into the shared repair VM's slot", errno);
    at += static_cast<std::uint64_t>(got);
  }
  ring();
  load_pending_ = place;
  status_ = fmt::format("slot {} of the shared repair VM: waiting for its agent", slot_);
}

void SharedRepairVm::join_or_start(const RepairVm::Factory& factory, MachineConfig config,
                                   const std::vector<ArenaWindow>& arenas, std::uint64_t mailbox_bytes) {
  if (auto vm = live_vm(dir_)) {  // running: joined
    pid_ = vm->first;
    start_time_ = vm->second;
    return;
  }
  // None running (the first guest, or the last VM died): start it, with every slot's files empty.
  std::vector<UniqueFd> held;
  for (int k = 0; k < kSharedSlots; ++k) {
    UniqueFd mailbox = open_file(fmt::format("{}/mailbox-{}", dir_, k), O_RDWR | O_CREAT);
    empty_file(mailbox.get(), mailbox_bytes);
    UniqueFd payload = open_file(fmt::format("{}/payload-{}", dir_, k), O_RDWR | O_CREAT);
    empty_file(payload.get(), window_bytes_);
    config.shared_windows.push_back({fmt::format("slot-mailbox-{}", k), mailbox.get(), mailbox_bytes, false, repair::kSlotMailboxSlot, k});
    config.shared_windows.push_back({fmt::format("slot-payload-{}", k), payload.get(), window_bytes_, true, repair::kSlotPayloadSlot, k});
    held.push_back(std::move(mailbox));
    held.push_back(std::move(payload));
  }
  std::vector<UniqueFd> arena_fds;
  for (const auto& a : arenas) {
    UniqueFd fd = reopen_read_only(a.fd);
    if (!fd) fail_os(ExitCode::failure, "reopen a snapshot arena read-only for the shared repair VM", errno);
    arena_fds.push_back(std::move(fd));
  }
  add_common_windows(config, arena_fds, arenas, kernel_files_);
  config.name = fmt::format("repair-{}-{}", key_, instance_);
  config.runtime_dir = dir_ + "/vm";
  config.console_log = dir_ + "/vm/console.log";
  // It serves guests of other supervisors: it must outlive this one, and gives back what its
  // kernel frees, since nobody pauses it to read its free pages.
  config.outlives_supervisor = true;
  config.return_free_memory = true;
  config.doorbell = dir_ + "/vm/doorbell";
  machine_ = factory(config, Deadline::in(std::chrono::seconds(30)));
  machine_->resume();
  pid_ = machine_->process_id();
  start_time_ = live_process_start(pid_);
  started_vm_ = true;
  std::string tmp = dir_ + "/vm.json.tmp";
  std::ofstream(tmp) << nlohmann::json{{"pid", pid_}, {"start_time", start_time_}}.dump() << "\n";
  fs::rename(tmp, dir_ + "/vm.json");
}

SharedRepairVm::~SharedRepairVm() {
  // The slot back: its process of this guest ends (a zero session), its files hold nothing.
  mailbox_.reset();
  try {
    if (slot_ >= 0) {
      UniqueFd mailbox = open_file(fmt::format("{}/mailbox-{}", dir_, slot_), O_RDWR);
      struct stat st {};
      if (::fstat(mailbox.get(), &st) == 0) empty_file(mailbox.get(), static_cast<std::uint64_t>(st.st_size));
      if (payload_) empty_file(payload_.get(), window_bytes_);
      ring();  // its process of this guest ends now
    }
  } catch (const std::exception&) {
  }
  // The last to leave ends the VM (under the lock, so that nobody joins meanwhile).
  try {
    UniqueFd lock = open_file(dir_ + "/lock", O_RDWR | O_CREAT);
    lock_file(lock, dir_ + "/lock");
    slot_lock_.reset();
    if (slots_taken(dir_) > 0) {
      if (machine_) machine_->release();  // it goes on serving them
    } else {
      if (machine_) machine_->terminate(std::chrono::milliseconds(0));
      else if (start_time_ && live_process_start(pid_) == start_time_) ::kill(pid_, SIGKILL);
      ::unlink((dir_ + "/vm.json").c_str());
    }
  } catch (const std::exception&) {
    if (machine_) machine_->release();
  }
}

void SharedRepairVm::ring() const {
  const unsigned char slot = static_cast<unsigned char>(slot_);
  if (doorbell_) (void)!::write(doorbell_.get(), &slot, 1);  // full: it has rung already
}

UniqueFd SharedRepairVm::take_payload() const { return UniqueFd(::fcntl(payload_.get(), F_DUPFD_CLOEXEC, 0)); }

bool SharedRepairVm::vm_alive() const { return start_time_ && live_process_start(pid_) == start_time_; }

void SharedRepairVm::fail_with(const std::string& why) {
  state_ = WorkerState::failed;
  status_ = why;
}

WorkerState SharedRepairVm::state() {
  if (state_ == WorkerState::failed) return state_;
  if (!vm_alive()) {
    fail_with("the shared repair VM is gone");
    return state_;
  }
  if (state_ == WorkerState::ready) {
    // Its slot's process started over (killed, or it failed): what it had loaded is gone.
    auto s = mailbox_->box().agent_state();
    if (s == repair::AgentState::waiting || s == repair::AgentState::failed)
      fail_with("the agent of the shared repair VM's slot started over: " + mailbox_->box().agent_status());
  } else if (state_ == WorkerState::starting) {
    // A load is posted once the slot's agent is up (waiting: the first; ready: a reload) and a
    // snapshot can be taken; asked again on every tick until then.
    const auto agent = mailbox_->box().agent_state();
    if (load_seq_) check_load();
    else if (load_pending_ && (agent == repair::AgentState::waiting || agent == repair::AgentState::ready)) post_load();
    else if (agent == repair::AgentState::failed)
      fail_with("the repair agent of the shared repair VM's slot failed: " + mailbox_->box().agent_status());
    if (state_ == WorkerState::starting && Clock::now() - started_ > kLoadLimit)
      fail_with(fmt::format("the shared repair VM's slot {} was not ready after {} s: {}", slot_, kLoadLimit.count(), status_));
  }
  return state_;
}

bool SharedRepairVm::post_load() {
  std::optional<PostedLoad> load;
  try {
    load = post_load_from_snapshot(mailbox_->box(), take_snapshot_, *load_pending_);
  } catch (const std::exception& e) {
    fail_with(e.what());
    return false;
  }
  if (!load) {
    status_ = "waiting for a snapshot of the guest to load its profile from (the page classes, or a free arena)";
    return false;
  }
  ring();
  load_seq_ = load->seq;
  last_load_ = std::move(load->described);
  load_snapshot_ = std::move(load->snapshot);
  load_posted_ = Clock::now();
  load_pending_.reset();
  status_ = "loading the profile from a snapshot of the guest";
  return true;
}

void SharedRepairVm::check_load() {
  std::optional<std::string> answer;
  try {
    answer = mailbox_->box().take_response(load_seq_);
  } catch (const std::runtime_error& e) {
    return fail_with(e.what());
  }
  if (!answer) return;
  load_seq_ = 0;
  load_snapshot_.reset();  // its arena goes back to the pool
  mailbox_->clear_attachment();
  last_load_["ms"] = ms_since(load_posted_);
  if (auto why = load_refused(*answer)) return fail_with("the repair agent could not load the profile: " + *why);
  state_ = WorkerState::ready;
  status_ = mailbox_->box().agent_status();
  start_ms_ = ms_since(started_);
}

bool SharedRepairVm::reload(std::uint64_t offset, std::uint64_t size) {
  if (state() != WorkerState::ready) return false;
  // The payload is already in the slot (the image writes it there): the slot's agent loads it.
  state_ = WorkerState::starting;
  status_ = "loading a new profile";
  started_ = Clock::now();
  start_ms_ = 0;
  load_pending_ = PayloadPlace{offset, size};
  post_load();
  return true;
}

std::string SharedRepairVm::analyse(const std::string& request, Deadline deadline, std::string_view attachment) {
  if (state() != WorkerState::ready) fail(ExitCode::failure, "the shared repair VM's slot is not ready: {}", status_);
  if (attachment.empty())
    fail(ExitCode::failure, "the crash's snapshot is not in the host's arenas, and the repair VM reads nothing else of the guest");
  std::uint64_t seq = 0;
  try {
    seq = mailbox_->box().post_request(request, attachment);
  } catch (const std::runtime_error& e) {
    fail(ExitCode::failure, "cannot post the request to the shared repair VM: {}", e.what());
  }
  ring();
  for (;;) {
    std::optional<std::string> answer;
    try {
      answer = mailbox_->box().take_response(seq);
    } catch (const std::runtime_error& e) {
      fail_with(e.what());
      throw Error(ExitCode::failure, e.what());
    }
    if (answer) {
      mailbox_->clear_attachment();
      return *answer;
    }
    if (deadline.expired()) {
      fail_with("the shared repair VM did not answer in time");
      fail(ExitCode::timeout, "{}", status_);
    }
    if (!vm_alive()) {
      fail_with("the shared repair VM is gone");
      fail(ExitCode::failure, "{}", status_);
    }
    std::this_thread::sleep_for(std::chrono::microseconds(100));
  }
}

void SharedRepairVm::describe(nlohmann::json& into) const {
  into["kernel"] = kernel_;
  into["guest_ram_window"] = false;
  nlohmann::json shared = {{"dir", dir_}, {"instance", instance_}, {"slot", slot_}, {"slots", kSharedSlots}, {"started_here", started_vm_}, {"qemu_pid", pid_}};
  // How many guests it serves, counted under its lock (never while one joins: a look at a slot's
  // lock would make a joiner take it for held).
  UniqueFd lock(::open((dir_ + "/lock").c_str(), O_RDWR | O_CLOEXEC | O_NOFOLLOW));
  if (lock && ::flock(lock.get(), LOCK_EX | LOCK_NB) == 0) shared["guests"] = slots_taken(dir_);
  into["shared"] = shared;
  if (!last_load_.is_null()) into["load"] = last_load_;
}

}  // namespace immortal::vmm
