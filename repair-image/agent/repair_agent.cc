// immortal-repair-agent: the repair engine as a program of its own (static, no libc of the
// host needed), so that a crashed guest's memory is parsed outside the supervisor.
//
//   in the repair VM     it is /init of the repair VM's initramfs: mounts /proc and /sys, maps
//                        the mailbox (ivshmem BAR) and the repair payload (another, read-only:
//                        protocol/payload.h), waits for the supervisor's load request, loads the
//                        profile and the healthy copy from the payload over the snapshot of the
//                        guest the request names in one of the host's arenas (two more BARs,
//                        read-only), and answers requests by polling, each in a process forked
//                        for it, which reads the crash from its snapshot in an arena. (A VM
//                        given the guest's RAM as a BAR instead loads from it at once.)
//   --inline             a sandboxed host process the supervisor starts: the same, with the RAM,
//                        the payload and the mailbox as inherited descriptors and a socket as
//                        doorbell.
//   --report             a sandboxed host process per bundle: reads the report's kernel parts
//                        from the bundle's snapshot, answers once and exits (agent/report_mode.h).
//   --classify           a sandboxed host process per profile: which pages a bundle's snapshot
//                        copies, from struct page, at each snapshot (agent/classify_mode.h).
//   --introspect         a sandboxed host process per `immortal ps|lsmod|dmesg`: walks the
//                        live guest's lists while the supervisor holds it paused, answers once
//                        and exits (agent/introspect_mode.h).
//
// docs/protocol.md ("Repair protocol") has the mailbox and the messages.
#include "agent/classify_mode.h"
#include "agent/introspect_mode.h"
#include "agent/report_mode.h"
#include "agent/sandbox.h"

#include "base/clock.h"
#include "base/content_digest.h"
#include "base/error.h"
#include "base/unique_fd.h"
#include "engine/crash_memory.h"
#include "engine/healthy_image.h"
#include "engine/repair_service.h"
#include "engine/text_integrity.h"
#include "engine/text_precheck.h"
#include "kernel/orc_unwind.h"
#include "memory/shared_ram.h"
#include "profile/guest_profile.h"
#include "protocol/mailbox.h"
#include "protocol/payload.h"
#include "protocol/vm_windows.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <poll.h>
#include <termios.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <malloc.h>

#include <atomic>
#include <chrono>
#include <csignal>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <map>
#include <memory>
#include <optional>
#include <thread>

namespace immortal::repair {
namespace {

// The repair VM's windows, as sysfs shows their BARs (protocol/vm_windows.h: where the supervisor
// puts them). The guest's RAM only in a VM without the host's arena pool; the host pool's two
// snapshot arenas (a crash's snapshot is in one of them) and the host's copies of the kernel
// image's symbols, the kernel's BTF and the image's ORC tables (vmm/repair/shared_kernel_files.h),
// when it has them.
const std::string kRamResource = window_resource(kGuestRamSlot), kMailboxResource = window_resource(kMailboxSlot),
                  kPayloadResource = window_resource(kPayloadSlot), kSymbolsResource = window_resource(kSymbolsSlot),
                  kTypesResource = window_resource(kTypesSlot), kUnwindResource = window_resource(kUnwindSlot);
const std::string kArenaResources[] = {window_resource(kFirstArenaSlot), window_resource(kFirstArenaSlot + 1)};
// Slot k's processes run as kSlotUidBase + k: no slot's process can open another's windows, nor
// trace or signal another slot's processes.
constexpr uid_t kSlotUidBase = 60000;
// Under TCG a VM that is never paused pays for every wake-up: a slot sleeps until the host rings
// its doorbell, and looks at its mailbox this often anyway (a VM of one guest is paused while
// idle and polls every 200 µs).
constexpr auto kSharedPoll = std::chrono::milliseconds(1000);
// The doorbell: the host writes a slot's number to the VM's second serial port.
constexpr char kDoorbellTty[] = "/dev/ttyS1";

// In a slot of a shared VM: the arenas' windows, opened while still root (the slot's process
// then drops it).
int g_arena_fds[2] = {-1, -1};
bool g_shared = false;  // serving a slot of a shared VM
int g_bell = -1;        // …and its doorbell: readable when the host rang for this slot

// Until there may be something new in the mailbox: in a shared VM, until the slot's doorbell rings
// (or a while passes: a lost ring costs time, never a crash); in a VM of one guest, which is
// paused while idle, a short poll.
void wait_for_news(std::chrono::milliseconds limit = kSharedPoll) {
  if (g_bell < 0) {
    std::this_thread::sleep_for(std::chrono::microseconds(200));
    return;
  }
  pollfd p{g_bell, POLLIN, 0};
  if (::poll(&p, 1, static_cast<int>(std::max<std::int64_t>(limit.count(), 1))) == 1) {
    char drain[64];
    while (::read(g_bell, drain, sizeof drain) > 0) {
    }
  }
}

// The inline agent's limits beyond what it has mapped (guest RAM, the mailbox, the payload): its
// parsed profile (symbols, BTF), the healthy copy and the engine's work fit in far less.
constexpr std::uint64_t kHeadroom = 3ull << 30;
constexpr std::uint64_t kLogLimit = 16 << 20;
constexpr char kWhere[] = "the repair payload";

void say(const std::string& line) {
  std::string out = "immortal-repair-agent: " + line + "\n";
  [[maybe_unused]] auto n = ::write(2, out.data(), out.size());
}

struct Config {
  std::vector<RamSegment> ram;
  std::uint64_t ram_size = 0;
  // What the payload leaves to the host's files (the guest's part of the profile only: issue 20),
  // named by their digests: the kernel image's symbols (and where this boot has the image), the
  // kernel's BTF and the image's ORC tables (and their lengths).
  std::optional<std::string> symbols_digest, btf_digest, orc_digest;
  std::uint64_t symbols_base = 0, btf_bytes = 0, orc_bytes = 0;
};

Config parse_config(std::string_view text) {
  auto j = nlohmann::json::parse(text, nullptr, false);
  if (j.is_discarded() || !j.is_object()) fail(ExitCode::bad_input, "{}: repair.json is not JSON", kWhere);
  Config c;
  c.ram_size = j.value("ram_size", std::uint64_t{0});
  for (const auto& s : j.value("ram", nlohmann::json::array()))
    c.ram.push_back({s.value("guest_physical", std::uint64_t{0}), s.value("file_offset", std::uint64_t{0}),
                     s.value("size", std::uint64_t{0})});
  if (!c.ram_size || c.ram.empty()) fail(ExitCode::bad_input, "{}: repair.json is incomplete", kWhere);
  try {
    if (auto it = j.find("kernel_symbols"); it != j.end()) {
      c.symbols_digest = it->at("digest").get<std::string>();
      c.symbols_base = it->at("base").get<std::uint64_t>();
    }
    if (auto it = j.find("kernel_btf"); it != j.end()) {
      c.btf_digest = it->at("digest").get<std::string>();
      c.btf_bytes = it->at("bytes").get<std::uint64_t>();
    }
    if (auto it = j.find("kernel_orc"); it != j.end()) {
      c.orc_digest = it->at("digest").get<std::string>();
      c.orc_bytes = it->at("bytes").get<std::uint64_t>();
    }
  } catch (const nlohmann::json::exception& e) {
    fail(ExitCode::bad_input, "{}: repair.json names the host's kernel files badly: {}", kWhere, e.what());
  }
  return c;
}

void* map_shared(int fd, std::uint64_t size, bool writable, const char* what) {
  void* p = ::mmap(nullptr, size, writable ? PROT_READ | PROT_WRITE : PROT_READ, MAP_SHARED, fd, 0);
  if (p == MAP_FAILED) fail_os(ExitCode::failure, fmt::format("mmap {}", what), errno);
  return p;
}

// The payload's descriptor mapped read-only, whole (its size is the descriptor's).
std::string_view map_payload(int fd) {
  struct stat st {};
  if (::fstat(fd, &st) != 0) fail_os(ExitCode::failure, "fstat the repair payload", errno);
  if (st.st_size <= 0) fail(ExitCode::bad_input, "{} is empty", kWhere);
  auto size = static_cast<std::uint64_t>(st.st_size);
  return {static_cast<const char*>(map_shared(fd, size, false, "the repair payload")), size};
}

// The digest of bytes of one of the host's files, which stay mapped for the process's life: hashed
// once (4-5 MiB take tens of ms under TCG), not at every reload of a profile.
const std::string& window_digest(std::span<const std::uint8_t> bytes) {
  static std::map<std::pair<const std::uint8_t*, std::size_t>, std::string> known;
  auto [it, fresh] = known.try_emplace({bytes.data(), bytes.size()});
  if (fresh) it->second = content_digest(bytes);
  return it->second;
}

// The first `bytes` of one of the host's files that the payload leaves a part to (`what`), checked
// to be what it names by `digest`: the payload lacks that part, so the load fails without it.
std::span<const std::uint8_t> named_host_bytes(std::span<const std::uint8_t> file, std::uint64_t bytes,
                                               const std::string& digest, const char* what, const char* other) {
  if (file.size() < bytes || window_digest(file.first(bytes)) != digest)
    fail(ExitCode::bad_input, "the payload leaves the kernel's {} to the host's file, which {}", what,
         file.empty() ? "this agent was not given" : other);
  return file.first(bytes);
}

// A keeper for one of the host's files, which the agent maps for the process's life
// (map_host_file): nothing to release.
std::shared_ptr<const void> kept_for_life(std::span<const std::uint8_t> mapped) {
  return std::shared_ptr<const void>(mapped.data(), [](const void*) {});
}

// What the engine is given, read but not parsed: the guest's profile, the healthy copy (or why
// there is none), and its RAM mapped (nothing of it read yet). The healthy copy's bytes stay
// where the payload has them.
struct Inputs {
  std::unique_ptr<PhysicalMemory> memory;  // the RAM, mapped by map_ram; none in a repair VM without its window
  EngineMemory::MapRam map_ram;             // maps it (again, once given up)
  // Without the RAM: what the load reads instead, a snapshot of the running guest the host took
  // into one of its arenas for it (the kernel's code pages from the healthy copy), unmapped once
  // the engine is loaded.
  std::unique_ptr<MemorySnapshot> load_snapshot;
  std::shared_ptr<void> load_pages;  // the arena's pages it reads, mapped here: unmapped when released
  GuestProfile::Files profile;
  std::string_view healthy_index, healthy_blob;
  std::string healthy_problem;
  Config config;  // repair.json
  double read_ms = 0;  // reading the payload's archive and the profile's files
  // The host's block of the kernel image's symbols (the repair VM's window): used instead of the
  // one parsed from the profile when it holds the same symbols.
  std::shared_ptr<const ImageSymbols> host_symbols;
  // The host's copy of the kernel's BTF (a window, a descriptor; mapped for the process's life):
  // read instead of libbpf's copy when it holds the same bytes.
  std::span<const std::uint8_t> host_types;
  // The same for the kernel image's ORC tables: read instead of the copy read from the guest's
  // memory when it holds the same bytes.
  std::span<const std::uint8_t> host_unwind;
};

Inputs read_inputs(std::string_view payload, int ram_fd) {
  auto t0 = std::chrono::steady_clock::now();
  auto files = read_payload(payload);
  auto file = [&](const std::string& name) -> std::optional<std::string_view> {
    auto it = files.find(name);
    if (it == files.end()) return std::nullopt;
    return it->second;
  };
  auto layout = file("repair.json");
  if (!layout) fail(ExitCode::bad_input, "{} has no repair.json", kWhere);
  Config c = parse_config(*layout);
  Inputs in;
  if (ram_fd >= 0) {
    in.map_ram = [ram_fd, c]() -> std::unique_ptr<PhysicalMemory> {
      return std::make_unique<SharedRamMemory>(ram_fd, c.ram_size, c.ram, /*writable=*/false);
    };
    in.memory = in.map_ram();
  }
  std::map<std::string, std::string_view> profile;
  for (const auto& [name, bytes] : files)
    if (name.starts_with("profile/")) profile.emplace(name.substr(8), bytes);
  in.profile = GuestProfile::files_from(profile, std::string(kWhere) + ": profile", c.btf_digest.has_value());
  in.config = c;
  auto index = file("healthy/healthy.json"), blob = file("healthy/healthy.bin");
  if (index && blob) {
    in.healthy_index = *index;
    in.healthy_blob = *blob;
  } else {
    in.healthy_problem = "the repair payload has no healthy copy";
  }
  in.read_ms = ms_since(t0);
  return in;
}

// The engine with its inputs parsed: the profile, the healthy copy, the guest's RAM.
class Engine {
 public:
  // parallel: a second CPU and new threads allowed (the repair VM, not the inline sandbox).
  Engine(Inputs in, bool parallel) : parallel_(parallel) {
    auto t0 = std::chrono::steady_clock::now();
    auto stage = [&, last = t0](const char* name) mutable {
      auto now = std::chrono::steady_clock::now();
      stages_ += fmt::format(", {} {:.0f}", name,
                             std::chrono::duration<double, std::milli>(now - last).count());
      last = now;
    };
    stages_ = fmt::format("payload {:.0f}", in.read_ms);
    memory_ = std::make_unique<EngineMemory>(std::move(in.memory), std::move(in.map_ram));
    // The healthy copy first: a load from a snapshot reads the kernel's code from it.
    healthy_problem_ = in.healthy_problem;
    if (healthy_problem_.empty()) {
      try {
        // Read where the payload has it: the payload stays mapped while this engine lives (the
        // supervisor punches a slot only after the next engine took over the other one).
        healthy_ = std::make_unique<HealthyImage>(HealthyImage::parse(in.healthy_index, in.healthy_blob,
                                                                      std::string(kWhere) + ": healthy",
                                                                      HealthyImage::Bytes::borrow));
      } catch (const std::exception& e) {
        healthy_problem_ = e.what();
      }
    }
    // Where the kernel's code lies whole in the copy: a crash's snapshot leaves those pages the
    // precheck found unchanged for after the resume, and they are read from the copy instead.
    if (healthy_) code_pages_ = whole_code_pages(*healthy_, /*find_zeros=*/false);
    stage("healthy copy");
    // No window onto the guest's RAM: everything the load reads of the guest comes from the
    // snapshot the host took for it, its code pages from the copy (the snapshot may have left them
    // out, as a crash's does), and that memory goes at the end of the load.
    std::unique_ptr<SnapshotWithCode> load_memory;
    if (in.load_snapshot) {
      load_memory = std::make_unique<SnapshotWithCode>(std::move(in.load_snapshot), code_pages_, TextPrecheck{});
      memory_->use(load_memory.get());
      load_read_ = "a snapshot";
    } else if (!memory_->has_ram()) {
      fail(ExitCode::failure, "nothing to load the profile from: no window onto the guest's RAM and no snapshot of it");
    }
    {
      // What the payload leaves to the host's files must be there, and be what it names.
      const Config& c = in.config;
      if (c.btf_digest) {
        auto btf = named_host_bytes(in.host_types, c.btf_bytes, *c.btf_digest, "BTF", "holds other types");
        in.profile["btf/vmlinux"].assign(reinterpret_cast<const char*>(btf.data()), btf.size());
      }
      // The kernel keeps what it parsed (symbols, types, module bases), not the profile's text:
      // dropping the 8 MiB of kallsyms and BTF here leaves them out of every agent's memory.
      GuestProfile profile = GuestProfile::parse(std::move(in.profile), std::string(kWhere) + ": profile");
      in.profile.clear();
      if (c.symbols_digest) {
        if (!in.host_symbols || in.host_symbols->digest() != *c.symbols_digest)
          fail(ExitCode::bad_input, "the payload leaves the kernel image's symbols to the host's file, which {}",
               in.host_symbols ? "holds another kernel's" : "this agent was not given");
        profile.image_symbols = std::exchange(in.host_symbols, nullptr);
        profile.image_base = c.symbols_base;
        symbols_shared_ = "shared";
      }
      stage("profile");
      kernel_ = Kernel::open(*memory_, profile, std::nullopt);
      // Before anything holds a name of it: the parsed block goes, the host's is read in place.
      if (in.host_symbols) symbols_shared_ = kernel_->share_image_symbols(std::move(in.host_symbols)) ? "shared" : "own (the host's differ)";
      if (!in.host_types.empty())
        types_shared_ = kernel_->share_btf(in.host_types, kept_for_life(in.host_types)) ? "shared" : "own (the host's differ)";
    }
    malloc_trim(0);
    stage("kernel");
    // A first comparison while the guest is healthy, the way a crash's goes: as if the
    // supervisor's precheck had found the first piece of every region differing, so that the
    // reading, unpacking and classifying are translated (under TCG) now rather than at the first
    // crash. Not the whole copy: unpacking 24 MB here, emulated, would cost more than the rest of
    // the load. The supervisor compares all of it where it runs at the host's speed (Arming).
    if (healthy_) {
      TextPrecheck sample = first_pieces(*healthy_);
      warmup_pieces_ = sample.differing.size();
      warmup_ = check_text_integrity(*kernel_, *healthy_, {}, &sample).corrupted.size();
    }
    stage("integrity");
    // The kernel image's unwind tables (megabytes, unchanged after boot) read now, not at the
    // first crash's unwind. A failure here is the first crash's to report.
    try {
      if (const Config& c = in.config; c.orc_digest) {
        // This guest's tables as the host's file holds them (the supervisor compared them with
        // its memory): nothing of them read from the guest.
        auto tables = named_host_bytes(in.host_unwind, c.orc_bytes, *c.orc_digest, "unwind tables", "holds other tables");
        auto table = image_orc_table(*kernel_, tables, kept_for_life(in.host_unwind));
        if (table->bytes.size() != c.orc_bytes)
          fail(ExitCode::bad_input, "the host's unwind tables are {} bytes, this kernel's {}", c.orc_bytes, table->bytes.size());
        kernel_->keep_orc_image(std::move(table));
        unwind_shared_ = "shared";
      }
      (void)OrcUnwinder(*kernel_).find(kernel_->symbols().address_of("_stext").value_or(0));
      if (auto own = kernel_->orc_image(); own && !in.host_unwind.empty() && unwind_shared_ != "shared") {
        auto shared = own->viewing(in.host_unwind, kept_for_life(in.host_unwind));
        unwind_shared_ = shared ? "shared" : "own (the host's differ)";
        if (shared) kernel_->keep_orc_image(std::move(shared));
        own.reset();
        malloc_trim(0);
      }
    } catch (const std::exception&) {
    }
    stage("unwind tables");
    // The analysis once over a sleeping process (engine/repair_service.h): its code translated
    // and its memory grown now, not in the first crash's pause.
    try {
      rehearsal_ = rehearse_analysis(*kernel_);
    } catch (const std::exception& e) {
      rehearsal_ = std::string("no rehearsal: ") + e.what();
    }
    stage("rehearsal");
    if (load_memory) {
      memory_->use(nullptr);
      kernel_->memory().forget_translations();
      load_memory.reset();
      in.load_pages.reset();  // the arena goes back to the host once the supervisor has the answer
    }
    load_ms_ = ms_since(t0);
  }

  // The repair VM's pid 1, once loaded: the guest's RAM unmapped (each fork for the next crash
  // copied the page tables of its mapping: 15-19 ms for 512 MiB); a request that needs it maps it.
  void give_up_ram() { memory_->drop_ram(); }

  std::string summary() const {
    // In the repair VM, the most this agent held at once (the VM's memory is sized for it): the
    // inline sandbox does not allow the call. Early in the line: the mailbox keeps 255 bytes of it.
    std::string peak;
    if (struct rusage u {}; parallel_ && ::getrusage(RUSAGE_SELF, &u) == 0) peak = fmt::format(", peak memory {} MiB", (u.ru_maxrss + 1023) / 1024);
    return fmt::format("ready: kernel {}, {} symbols ({}), types ({}), unwind tables ({}){}, healthy copy {} KiB ({} differences in {} pieces compared now){}, {}, loaded in {:.0f} ms from {} ({})",
                       kernel_->release(), kernel_->symbols().size(), symbols_shared_, types_shared_, unwind_shared_, peak, healthy_ ? healthy_->total_bytes() >> 10 : 0, warmup_,
                       warmup_pieces_,
                       healthy_problem_.empty() ? "" : " (" + healthy_problem_ + ")", rehearsal_, load_ms_, load_read_, stages_);
  }

  // Called with a request's snapshot (or none) before anything of the crash is read: maps it
  // (the repair VM's process for that crash), else returns nullptr (the guest's RAM is read).
  using SnapshotMapper = std::function<std::unique_ptr<MemorySnapshot>(const std::optional<SnapshotRef>&)>;

  // process: who analysed it, said in the answer ({"pid", "per_crash"} in the repair VM).
  // snapshots: how to read a request's crash snapshot; without, the guest's RAM is read (the
  // guest is stopped: the same bytes).
  std::string answer(const std::string& text, const nlohmann::json& process = nullptr, const SnapshotMapper* snapshots = nullptr) {
    auto t0 = std::chrono::steady_clock::now();
    const long faults_before = process.is_null() ? 0 : minor_faults();  // the inline sandbox forbids the call
    nlohmann::json out;
    std::unique_ptr<SnapshotWithCode> crash_memory;
    nlohmann::json memory = {{"read", "guest RAM"}};
    try {
      auto j = nlohmann::json::parse(text, nullptr, false);
      if (j.is_discarded()) fail(ExitCode::bad_input, "the request is not JSON");
      RepairRequest request = RepairRequest::from_json(j);
      auto t_map = std::chrono::steady_clock::now();
      auto snapshot = snapshots ? (*snapshots)(request.snapshot) : nullptr;
      if (!snapshot) {
        if (!memory_->has_ram())
          fail(ExitCode::failure, "this repair VM has no window onto the guest's RAM: it reads a crash from its snapshot "
                                  "in the host's arenas, and the request names none");
        memory_->map_ram();  // given up after the load in the repair VM
      } else {
        crash_memory = std::make_unique<SnapshotWithCode>(std::move(snapshot), code_pages_, request.text_precheck);
        memory_->use(crash_memory.get());
        memory = {{"read", "snapshot"}, {"arena", request.snapshot->arena},
                  {"pages", request.snapshot->pages_bytes / MemorySnapshot::kPageSize},
                  {"code_pages_from_healthy_copy", crash_memory->code_pages()}, {"map_ms", ms_since(t_map)}};
      }
      kernel_->memory().forget_translations();
      // A module loaded since the profile: its symbols come from its own table in memory.
      auto t_refresh = std::chrono::steady_clock::now();
      kernel_->refresh_module_symbols();
      double refresh_ms = ms_since(t_refresh);
      EngineResult r = run_repair_engine(*kernel_, healthy_.get(), request, {.parallel_integrity = parallel_});
      out = r.to_json();
      out["timings"]["module_symbols_ms"] = refresh_ms;
      out["ok"] = true;
      if (crash_memory) {
        memory["code_reads"] = crash_memory->code_reads();
        memory["code_read_ms"] = crash_memory->code_read_ms();
      }
    } catch (const std::exception& e) {
      out = {{"ok", false}, {"error", e.what()}};
    }
    memory_->use(nullptr);
    kernel_->memory().forget_translations();
    out["engine_ms"] = ms_since(t0);
    out["memory"] = memory;
    if (!process.is_null()) {
      // Page faults while it answered: under TCG each first write to a page of the engine it was
      // forked from is copied then (its caches, its heap), and each window page it reads is mapped.
      out["process"] = process;
      out["process"]["page_faults"] = std::max(0L, minor_faults() - faults_before);
    }
    return out.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
  }

 private:
  static long minor_faults() {
    struct rusage u {};
    return ::getrusage(RUSAGE_SELF, &u) == 0 ? u.ru_minflt : 0;
  }

  std::unique_ptr<EngineMemory> memory_;
  std::unique_ptr<Kernel> kernel_;
  std::unique_ptr<HealthyImage> healthy_;
  std::vector<WholeCodePage> code_pages_;
  std::string healthy_problem_;
  std::size_t warmup_ = 0, warmup_pieces_ = 0;
  double load_ms_ = 0;
  std::string stages_;  // each load stage's milliseconds, for the summary
  std::string rehearsal_;
  std::string load_read_ = "the guest's RAM";  // what the load read of the guest
  std::string symbols_shared_ = "own";  // the kernel image's symbols: parsed here, or the host's
  std::string types_shared_ = "own";    // the kernel's BTF: libbpf's copy, or the host's
  std::string unwind_shared_ = "own";   // the kernel image's ORC tables: read from its memory, or the host's
  bool parallel_ = false;
};

// One of the host's kernel files (a window's BAR, a descriptor), mapped read-only and whole for
// the process's life; fd is closed. Empty when there is nothing to map.
std::span<const std::uint8_t> map_host_file(int fd) {
  if (fd < 0) return {};
  struct stat st {};
  void* at = MAP_FAILED;
  if (::fstat(fd, &st) == 0 && st.st_size > 0)
    at = ::mmap(nullptr, static_cast<std::size_t>(st.st_size), PROT_READ, MAP_SHARED, fd, 0);
  ::close(fd);
  if (at == MAP_FAILED) return {};
  return {static_cast<const std::uint8_t*>(at), static_cast<std::size_t>(st.st_size)};
}

// The block in what map_host_file() mapped, checked (nullptr, said why, when it is not one).
std::shared_ptr<const ImageSymbols> host_symbols_in(std::span<const std::uint8_t> bytes) {
  if (bytes.empty()) return nullptr;
  std::string why;
  auto block = ImageSymbols::view(bytes, nullptr, &why);
  if (!block) say("the host's kernel symbols are not used: " + why);
  return block;
}

// The repair VM's window onto the host's block, mapped once for the VM's life.
std::shared_ptr<const ImageSymbols> window_symbols() {
  static const std::shared_ptr<const ImageSymbols> block =
      host_symbols_in(map_host_file(::open(kSymbolsResource.c_str(), O_RDONLY | O_CLOEXEC)));
  return block;
}

// The repair VM's windows onto the host's copies of the kernel's BTF and of its image's ORC
// tables, each mapped once for the VM's life.
std::span<const std::uint8_t> window_types() {
  static const std::span<const std::uint8_t> bytes = map_host_file(::open(kTypesResource.c_str(), O_RDONLY | O_CLOEXEC));
  return bytes;
}
std::span<const std::uint8_t> window_unwind() {
  static const std::span<const std::uint8_t> bytes = map_host_file(::open(kUnwindResource.c_str(), O_RDONLY | O_CLOEXEC));
  return bytes;
}

// Inputs read from a payload, with the host's symbols when the repair VM has them.
Inputs read_inputs_in_vm(std::string_view payload, int ram_fd) {
  Inputs in = read_inputs(payload, ram_fd);
  in.host_symbols = window_symbols();
  in.host_types = window_types();
  in.host_unwind = window_unwind();
  return in;
}

// In the repair VM the integrity check runs beside the analysis when the VM has a second vCPU.
bool vm_has_second_cpu() { return std::thread::hardware_concurrency() > 1; }

// Where this VM's kernel keeps its VMCOREINFO note ("%lx %x" in /sys/kernel/vmcoreinfo): the
// supervisor reads the kernel's free pages through it while the VM is paused, and gives their
// host memory back (vmm/repair/repair_vm_trim.h). Nothing is said when the file is missing.
void tell_own_vmcoreinfo(Mailbox& box) {
  std::ifstream in("/sys/kernel/vmcoreinfo");
  std::uint64_t paddr = 0;
  std::uint32_t size = 0;
  if (in >> std::hex >> paddr >> size && paddr && size) box.set_vmcoreinfo(paddr, size);
}

// ready_after: say "ready" once the answer is posted (a process that goes on serving).
void answer_one(Engine& engine, Mailbox& box, std::uint64_t seq, const std::string& request,
                const nlohmann::json& process = nullptr, bool ready_after = true,
                const Engine::SnapshotMapper* snapshots = nullptr) {
  box.set_state(AgentState::busy, "analysing");
  std::string response = engine.answer(request, process, snapshots);
  if (response.size() > kResponseMax)
    response = nlohmann::json{{"ok", false}, {"error", "the answer is larger than the mailbox"}}.dump();
  box.post_response(seq, response);
  if (ready_after) box.set_state(AgentState::ready, "ready");
  else box.set_state(AgentState::busy, "answered; the process for the next crash is being prepared");
}

// --inline --payload-fd P [--payload-offset O] --ram-fd N --mailbox-fd M --doorbell-fd D [--symbols-fd S] [--types-fd T]
//          [--unwind-fd U]
int run_inline(int argc, char** argv) {
  int payload_fd = -1, ram_fd = -1, mailbox_fd = -1, doorbell = -1, symbols_fd = -1, types_fd = -1, unwind_fd = -1;
  std::uint64_t payload_offset = 0;
  for (int i = 2; i + 1 < argc; i += 2) {
    std::string k = argv[i], v = argv[i + 1];
    if (k == "--payload-fd") payload_fd = std::stoi(v);
    else if (k == "--payload-offset") payload_offset = std::stoull(v);
    else if (k == "--ram-fd") ram_fd = std::stoi(v);
    else if (k == "--mailbox-fd") mailbox_fd = std::stoi(v);
    else if (k == "--doorbell-fd") doorbell = std::stoi(v);
    else if (k == "--symbols-fd") symbols_fd = std::stoi(v);
    else if (k == "--types-fd") types_fd = std::stoi(v);
    else if (k == "--unwind-fd") unwind_fd = std::stoi(v);
  }
  if (payload_fd < 0 || ram_fd < 0 || mailbox_fd < 0 || doorbell < 0) {
    say("usage: immortal-repair-agent --inline --payload-fd P [--payload-offset O] --ram-fd N --mailbox-fd M --doorbell-fd D");
    return 2;
  }
  Mailbox box(map_shared(mailbox_fd, kMailboxSize, true, "the mailbox"));
  // A proof that the sandbox holds, for an operator or a test: with IMMORTAL_SANDBOX_CANARY=1 the
  // agent makes a call its filter forbids (socket) when the first request comes. It must die of
  // SIGSYS there, and the supervisor must take that as a failed worker (docs/recovery.md, 7).
  bool canary = sandbox_canary_set();
  std::unique_ptr<Engine> engine;
  try {
    // Everything is read first and parsed only inside the sandbox: a hostile profile, BTF or
    // guest memory meets a process that is nobody, bounded and filtered.
    std::string_view window = map_payload(payload_fd);
    if (payload_offset >= window.size()) fail(ExitCode::bad_input, "the payload offset lies beyond the payload");
    Inputs inputs = read_inputs(window.substr(payload_offset), ram_fd);
    // The host's files of the kernel image's symbols, BTF and ORC tables: mapped now, checked
    // inside the sandbox.
    std::span<const std::uint8_t> symbols = map_host_file(symbols_fd);
    inputs.host_types = map_host_file(types_fd);
    inputs.host_unwind = map_host_file(unwind_fd);
    ::close(ram_fd);  // the mappings stay; the descriptors are not needed any more
    ::close(payload_fd);
    ::close(mailbox_fd);
    enter_sandbox({address_space_in_use() + kHeadroom, kLogLimit});
    inputs.host_symbols = host_symbols_in(symbols);
    engine = std::make_unique<Engine>(std::move(inputs), /*parallel=*/false);
  } catch (const std::exception& e) {
    box.set_state(AgentState::failed, e.what());
    char c = 'f';
    [[maybe_unused]] auto n = ::write(doorbell, &c, 1);
    return 1;
  }
  box.set_state(AgentState::ready, engine->summary());
  char c = 'r';
  if (::write(doorbell, &c, 1) != 1) return 1;
  for (;;) {
    ssize_t n = ::read(doorbell, &c, 1);
    if (n == 0) return 0;  // the supervisor closed its end
    if (n < 0) {
      if (errno == EINTR) continue;
      return 1;
    }
    if (canary) {
      int fd = ::socket(AF_INET, SOCK_STREAM, 0);
      say(fmt::format("the sandbox let socket() through (it returned {}): the sandbox is broken", fd));
      return 3;
    }
    answer_one(*engine, box, box.request_seq(), box.request());
    if (::write(doorbell, &c, 1) != 1) return 1;
  }
}

// {"reload": {"offset", "size"}, "snapshot": {…}}: a payload was written into the window at
// [offset, offset + size) (the first one, or a new profile: a module loaded or unloaded), and the
// load reads the guest from the snapshot named (its index the request's attachment) when the VM
// has no window onto its RAM. Anything else is a crash to analyse.
struct LoadRequest {
  std::uint64_t offset = 0, size = 0;  // size 0 (or a problem): refused by the load
  std::optional<SnapshotRef> snapshot;
  std::string problem;  // why it is refused
};

std::optional<LoadRequest> reload_request(const std::string& text, std::uint64_t window) {
  auto j = nlohmann::json::parse(text, nullptr, false);
  if (j.is_discarded() || !j.is_object() || !j.contains("reload")) return std::nullopt;
  const auto& r = j["reload"];
  LoadRequest load;
  std::uint64_t offset = r.is_object() ? r.value("offset", ~0ull) : ~0ull, size = r.is_object() ? r.value("size", 0ull) : 0;
  if (offset > window || size > window - offset) return load;  // refused below
  load.offset = offset;
  load.size = size;
  try {
    if (auto s = j.find("snapshot"); s != j.end() && !s->is_null()) load.snapshot = snapshot_ref_from_json(*s, "the load request");
  } catch (const std::exception& e) {
    load.problem = e.what();
  }
  return load;
}

// Whether this VM has the host pool's snapshot arenas: its crashes are then read from their
// snapshots, and pid 1 need not keep the guest's RAM mapped between loads.
bool vm_has_arenas() {
  for (const auto& path : kArenaResources)
    if (::access(path.c_str(), R_OK) != 0) return false;
  return true;
}

// The snapshot a request names, mapped read-only from the arena's window (only the page slots its
// index names) and adopted with that index, the request's attachment. unmap: set to what unmaps
// the pages when released (a load's, in pid 1); without, they stay mapped (a crash's process
// exits after its answer).
std::unique_ptr<MemorySnapshot> map_arena_snapshot(const SnapshotRef& ref, Mailbox& box, std::shared_ptr<void>* unmap = nullptr) {
  if (ref.arena < 0 || static_cast<std::size_t>(ref.arena) >= std::size(kArenaResources))
    fail(ExitCode::bad_input, "the request names snapshot arena {}", ref.arena);
  const char* path = kArenaResources[ref.arena].c_str();
  UniqueFd fd(g_arena_fds[ref.arena] >= 0 ? ::dup(g_arena_fds[ref.arena]) : ::open(path, O_RDONLY | O_CLOEXEC));
  if (!fd) fail_os(ExitCode::failure, fmt::format("open the snapshot arena's window {}", path), errno);
  struct stat st {};
  if (::fstat(fd.get(), &st) != 0) fail_os(ExitCode::failure, path, errno);
  const std::uint64_t window = static_cast<std::uint64_t>(st.st_size);
  if (ref.pages_bytes == 0 || ref.pages_bytes % MemorySnapshot::kPageSize || ref.pages_bytes > window)
    fail(ExitCode::bad_input, "the snapshot's {} bytes of pages do not fit its arena's window of {}", ref.pages_bytes, window);
  std::string_view index = box.attachment();
  if (index.size() != ref.index_bytes)
    fail(ExitCode::bad_input, "the snapshot's index is {} bytes, the request says {}", index.size(), ref.index_bytes);
  // A crash's: mapped for its process only (it exits after its answer). A load's: by pid 1, for
  // the load only; it never maps an arena otherwise.
  void* pages = ::mmap(nullptr, ref.pages_bytes, PROT_READ, MAP_SHARED, fd.get(), 0);
  if (pages == MAP_FAILED) fail_os(ExitCode::failure, "map the crash's snapshot", errno);
  if (unmap) *unmap = std::shared_ptr<void>(pages, [bytes = ref.pages_bytes](void* p) { ::munmap(p, bytes); });
  return MemorySnapshot::adopt(index, static_cast<std::byte*>(pages), ref.pages_bytes, /*census=*/false);
}

// Replaces the engine with one over the new payload, in place of a reboot of the repair VM (issue
// 20: ready within about a second of a profile change instead of a boot's seconds). The old
// engine goes first: the VM's memory holds one parsed profile at a time. Returns the new engine
// (nullptr if it could not load) and the reload's answer, for the caller to post.
std::pair<std::unique_ptr<Engine>, std::string> reload(std::unique_ptr<Engine> old, std::string_view window, const LoadRequest& load,
                                                       int ram_fd, Mailbox& box) {
  const bool first = !old;
  old.reset();
  box.set_state(AgentState::booting, first ? "loading the profile" : "loading the new profile");
  try {
    if (!load.problem.empty()) fail(ExitCode::bad_input, "{}", load.problem);
    if (!load.size) fail(ExitCode::bad_input, "the reload names no payload inside the window");
    Inputs inputs = read_inputs_in_vm(window.substr(load.offset, load.size), ram_fd);
    if (load.snapshot) inputs.load_snapshot = map_arena_snapshot(*load.snapshot, box, &inputs.load_pages);
    auto engine = std::make_unique<Engine>(std::move(inputs), vm_has_second_cpu());
    say(engine->summary());
    if (vm_has_arenas()) engine->give_up_ram();
    std::string answer = nlohmann::json{{"ok", true}, {"reloaded", engine->summary()}}.dump();
    return {std::move(engine), std::move(answer)};
  } catch (const std::exception& e) {
    say(std::string("cannot load the new profile: ") + e.what());
    box.set_state(AgentState::failed, e.what());
    return {nullptr, nlohmann::json{{"ok", false}, {"error", e.what()}}.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace)};
  }
}

// What a forked analysing process and pid 1 tell each other, in a page they share.
struct Handoff {
  std::atomic<double> fork_ms{0};             // pid 1: how long its fork took
  std::atomic<std::uint64_t> taken{0};        // the child: the request it took
  std::atomic<bool> answered{false};          // …and answered
  std::atomic<bool> reload{false};            // …or left to pid 1 (a reload)
};

// The analysing process: waits for the next request after `done`, answers a crash and exits;
// leaves a reload (which replaces pid 1's engine) to pid 1. Never returns.
[[noreturn]] void analyse_next(Engine& engine, Mailbox& box, std::uint64_t done, std::uint64_t window, Handoff& handoff,
                               bool canary, std::uint64_t session) {
  while (box.request_seq() == done) {
    if (g_shared && box.session() != session) ::_exit(0);  // another supervisor has the slot: pid 1 starts it over
    wait_for_news();
  }
  std::uint64_t seq = box.request_seq();
  std::string request = box.request();
  handoff.taken = seq;
  if (reload_request(request, window)) {
    handoff.reload = true;
    ::_exit(0);
  }
  // The canary in the repair VM (IMMORTAL_SANDBOX_CANARY=1 on its kernel's command line, which a
  // supervisor with it in its environment puts there): the analysis dies as if a guest's crafted
  // memory had crashed the engine.
  if (canary) ::raise(SIGSEGV);
  // Not "ready" after the answer: pid 1 says so once the next process is forked, and the
  // supervisor keeps the VM running until then (vmm/repair/repair_vm.cc), so that this one's exit
  // and the next fork are not left for the next crash's resume.
  Engine::SnapshotMapper snapshots = [&](const std::optional<SnapshotRef>& ref) {
    std::unique_ptr<MemorySnapshot> snapshot = ref ? map_arena_snapshot(*ref, box) : nullptr;
    for (int& fd : g_arena_fds) {  // a slot's: the other arena may hold another guest's snapshot
      if (fd >= 0) ::close(fd);
      fd = -1;
    }
    // Before anything of the crash is read: no other window can be opened now. A slot's process
    // is no longer root: its crash's process keeps its account, which opens no window, and cannot
    // reach the engine it was forked from (the slot's process is not dumpable: neither ptrace
    // nor /proc/PID/mem), only its own /proc/self (libbpf reads module BTF through it).
    if (g_shared) ::prctl(PR_SET_DUMPABLE, 1);
    else drop_root();
    return snapshot;
  };
  nlohmann::json process = {{"pid", ::getpid()}, {"per_crash", true}, {"fork_ms", handoff.fork_ms.load()}};
  answer_one(engine, box, seq, request, process, /*ready_after=*/false, &snapshots);
  handoff.answered = true;
  ::_exit(0);
}

std::string describe_exit(int status) {
  if (WIFSIGNALED(status)) return fmt::format("was killed by signal {} ({})", WTERMSIG(status), strsignal(WTERMSIG(status)));
  return fmt::format("exited with status {}", WEXITSTATUS(status));
}

// Where a serving process finds its mailbox and payload: a VM of one guest's, or a slot of a
// shared VM's.
struct Windows {
  std::string mailbox = kMailboxResource, payload = kPayloadResource;
  int slot = -1;  // a shared VM's slot, else -1
  int bell = -1;  // its doorbell's read end
};

// Serves one guest: pid 1 of a VM of one guest, or a slot's process in a shared VM. Never returns.
//
// Each crash is analysed by a fresh process, forked from this one ahead of the crash, which
// answers that one request and exits (the shared repair VM's isolation: docs/architecture.md,
// "Where crashes are analysed"). Whatever a guest's crafted memory does to the process analysing
// it (crashes the engine, fills its caches, leaves state behind) ends with that process; the
// next crash starts again from the engine as loaded. Forked ahead, the fork is off the crash's
// path; what the analysis writes of the loaded engine's memory is copied on write (≈ 12 µs a
// page under TCG: docs/benchmarks.md).
[[noreturn]] void serve(const Windows& where) {
  Mailbox* box = nullptr;
  g_bell = where.bell;
  try {
    int mfd = ::open(where.mailbox.c_str(), O_RDWR | O_SYNC | O_CLOEXEC);
    if (mfd < 0) fail_os(ExitCode::failure, where.mailbox, errno);
    // Its size is the BAR's: a repair VM that reads snapshots has a larger one (their page index).
    struct stat mst {};
    if (::fstat(mfd, &mst) != 0) fail_os(ExitCode::failure, where.mailbox, errno);
    std::uint64_t mailbox_bytes = std::max<std::uint64_t>(static_cast<std::uint64_t>(mst.st_size), kMailboxSize);
    box = new Mailbox(map_shared(mfd, mailbox_bytes, true, "the mailbox BAR"), mailbox_bytes);
    // A slot nobody has taken yet: wait, unloaded, for one (each look is a wake-up under TCG).
    if (where.slot >= 0)
      while (!box->valid()) wait_for_news();
    if (!box->valid()) fail(ExitCode::failure, "the mailbox was not initialised by the supervisor");
    const std::uint64_t session = box->session();
    box->serve(session);
    box->set_state(AgentState::booting, "loading the profile");
    int pfd = ::open(where.payload.c_str(), O_RDONLY | O_CLOEXEC);
    if (pfd < 0) fail_os(ExitCode::failure, where.payload, errno);
    // No window onto the guest's RAM (a VM that reads the guest only from snapshots in the host's
    // arenas): nothing is loaded until the supervisor asks, naming a snapshot to load from.
    int rfd = where.slot >= 0 ? -1 : ::open(kRamResource.c_str(), O_RDONLY | O_CLOEXEC);
    if (rfd < 0 && errno != ENOENT && where.slot < 0) fail_os(ExitCode::failure, kRamResource, errno);
    std::string_view window = map_payload(pfd);
    tell_own_vmcoreinfo(*box);
    if (where.slot >= 0) {
      // What a slot reads besides its own windows is opened now, as root; then the slot's own
      // account: it cannot open another slot's windows, nor trace another slot's processes.
      for (std::size_t i = 0; i < std::size(kArenaResources); ++i) {
        g_arena_fds[i] = ::open(kArenaResources[i].c_str(), O_RDONLY | O_CLOEXEC);
        if (g_arena_fds[i] < 0) fail_os(ExitCode::failure, kArenaResources[i], errno);
      }
      (void)window_symbols();
      (void)window_types();
      (void)window_unwind();
      g_shared = true;
      drop_root_to(kSlotUidBase + static_cast<uid_t>(where.slot));
      // Not dumpable: the processes it forks per crash share its account, and must not be able to
      // change the engine the next crash's process is forked from.
      ::prctl(PR_SET_DUMPABLE, 0);
    }
    std::unique_ptr<Engine> engine;
    if (rfd >= 0) {
      engine = std::make_unique<Engine>(read_inputs_in_vm(window, rfd), vm_has_second_cpu());
      say(engine->summary());
      if (vm_has_arenas()) engine->give_up_ram();
    }
    const bool canary = sandbox_canary_set();
    void* shared = ::mmap(nullptr, sizeof(Handoff), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (shared == MAP_FAILED) fail_os(ExitCode::failure, "mmap the page shared with the analysing processes", errno);
    std::uint64_t done = box->request_seq();
    // A reload's answer, posted once the process that will analyse the next crash is forked
    // from the new engine: the supervisor pauses the VM as soon as it has the answer.
    std::optional<std::string> reloaded;
    auto take_reload = [&](const LoadRequest& load) {
      auto [next, answer] = reload(std::move(engine), window, load, rfd, *box);
      engine = std::move(next);
      if (engine) reloaded = std::move(answer);
      else box->post_response(done, answer);
    };
    // Another supervisor has taken this slot (or its last one let go): this process, and the
    // engine it holds of the last guest, end; pid 1 starts the slot over.
    auto slot_taken_over = [&] { return where.slot >= 0 && box->session() != session; };
    auto fork_again_at = std::chrono::steady_clock::now();
    // In a shared VM, which nobody pauses: after an answer, the next process is forked a moment
    // later, not while the guest resumes beside it on the host's cores (a VM of one guest is
    // resumed for that by its supervisor 250 ms later: vmm/repair/repair_vm.h). A request that
    // comes meanwhile has it forked at once.
    std::optional<std::chrono::steady_clock::time_point> quiet_until;
    // Said once the request number is read: a load asked for before would go unseen.
    if (!engine) box->set_state(AgentState::waiting, "waiting for the supervisor's snapshot of the guest to load its profile");
    for (;;) {
      if (slot_taken_over()) ::_exit(0);
      if (quiet_until) {
        auto left = std::chrono::duration_cast<std::chrono::milliseconds>(*quiet_until - std::chrono::steady_clock::now());
        if (left.count() > 0 && box->request_seq() == done) {
          wait_for_news(left);
          continue;
        }
        quiet_until.reset();
      }
      pid_t child = -1;
      Handoff* handoff = nullptr;
      if (engine && std::chrono::steady_clock::now() >= fork_again_at) {
        handoff = new (shared) Handoff{};
        auto t0 = std::chrono::steady_clock::now();
        child = ::fork();
        if (child == 0) analyse_next(*engine, *box, done, window.size(), *handoff, canary, session);
        if (child > 0) handoff->fork_ms = ms_since(t0);
        if (child < 0) {
          say(fmt::format("cannot fork a process to analyse the next crash ({}): pid 1 answers for the next second",
                          std::strerror(errno)));
          fork_again_at = std::chrono::steady_clock::now() + std::chrono::seconds(1);
        }
      }
      if (engine) box->set_state(AgentState::ready, engine->summary());
      if (reloaded) box->post_response(done, *std::exchange(reloaded, std::nullopt));
      if (child > 0) {
        int status = 0;
        while (::waitpid(child, &status, 0) < 0 && errno == EINTR) {
        }
        if (slot_taken_over()) ::_exit(0);
        std::uint64_t seq = handoff->taken;
        if (!seq) {
          // Gone before a request came (nothing here ends it): said, and not forked again at once.
          say("the process forked to analyse the next crash " + describe_exit(status) + " before a request came");
          fork_again_at = std::chrono::steady_clock::now() + std::chrono::seconds(1);
          continue;
        }
        done = seq;
        if (handoff->reload) {
          // The request the child saw: the supervisor posts the next one only after its answer.
          take_reload(reload_request(box->request(), window.size()).value_or(LoadRequest{}));
          continue;
        }
        if (!handoff->answered) {
          std::string why = "the process analysing the crash " + describe_exit(status) + " before it answered";
          say(why);
          box->post_response(seq, nlohmann::json{{"ok", false}, {"error", why}}.dump());
        }
        if (where.slot >= 0) quiet_until = std::chrono::steady_clock::now() + std::chrono::milliseconds(250);
        continue;
      }
      // No engine (a reload failed), or no process could be forked: answered here, by pid 1.
      if (box->request_seq() != done) {
        done = box->request_seq();
        std::string request = box->request();
        if (auto at = reload_request(request, window.size())) {
          take_reload(*at);
        } else if (engine) {
          answer_one(*engine, *box, done, request);
        } else {
          box->post_response(done, R"({"ok":false,"error":"the repair agent has no profile loaded"})");
        }
        continue;
      }
      // While idle the supervisor keeps a VM of one guest paused: polling costs nothing then.
      wait_for_news();
    }
  } catch (const std::exception& e) {
    say(std::string("cannot serve: ") + e.what());
    if (box) box->set_state(AgentState::failed, e.what());
  }
  if (where.slot >= 0) ::_exit(1);  // pid 1 starts the slot over
  for (;;) ::pause();
}

// The doorbell's process in a shared VM: reads the slot numbers the host writes to the second
// serial port and wakes those slots (bells[k]: the write end of slot k's pipe). Never returns.
[[noreturn]] void ring_slots(const std::vector<int>& bells) {
  // No device nodes but the console in the initramfs: ttyS1 is major 4, minor 65.
  ::mknod(kDoorbellTty, S_IFCHR | 0600, makedev(4, 65));
  int tty = ::open(kDoorbellTty, O_RDONLY | O_NOCTTY | O_CLOEXEC);
  if (tty < 0) {
    say(fmt::format("no doorbell ({}: {}): the slots look at their mailboxes every {} ms", kDoorbellTty, std::strerror(errno),
                    kSharedPoll.count()));
    for (;;) ::pause();
  }
  termios raw {};
  if (::tcgetattr(tty, &raw) == 0) {
    ::cfmakeraw(&raw);
    raw.c_cc[VMIN] = 1;
    raw.c_cc[VTIME] = 0;
    ::tcsetattr(tty, TCSANOW, &raw);
  }
  for (;;) {
    unsigned char rung[64];
    ssize_t n = ::read(tty, rung, sizeof rung);
    if (n <= 0) {
      if (n < 0 && errno != EINTR) std::this_thread::sleep_for(std::chrono::milliseconds(100));
      continue;
    }
    for (ssize_t i = 0; i < n; ++i)
      if (rung[i] < bells.size()) (void)!::write(bells[rung[i]], "!", 1);  // a full pipe has rung already
  }
}

// pid 1 of a shared VM: a process per slot, started again whenever it ends (its supervisor let go
// of the slot, another took it, or it failed), and the doorbell's. Never returns.
[[noreturn]] void serve_slots(int slots) {
  // A pipe per slot, which the doorbell's process writes and only that slot's processes read.
  std::vector<int> reads(static_cast<std::size_t>(slots)), writes(static_cast<std::size_t>(slots));
  for (int k = 0; k < slots; ++k) {
    int p[2];
    if (::pipe2(p, O_NONBLOCK) != 0) {
      p[0] = p[1] = -1;
      say(fmt::format("no doorbell pipe for slot {}: {}", k, std::strerror(errno)));
    }
    reads[static_cast<std::size_t>(k)] = p[0];
    writes[static_cast<std::size_t>(k)] = p[1];
  }
  pid_t ringer = -1;
  auto start_ringer = [&] {
    ringer = ::fork();
    if (ringer == 0) {
      for (int fd : reads) ::close(fd);
      ring_slots(writes);
    }
  };
  start_ringer();
  std::map<pid_t, int> slot_of;
  std::vector<std::chrono::steady_clock::time_point> started(static_cast<std::size_t>(slots));
  auto start = [&](int k) {
    started[static_cast<std::size_t>(k)] = std::chrono::steady_clock::now();
    pid_t pid = ::fork();
    if (pid == 0) {
      // Only its own bell: another slot's it could neither steal nor ring.
      for (int j = 0; j < slots; ++j) {
        ::close(writes[static_cast<std::size_t>(j)]);
        if (j != k) ::close(reads[static_cast<std::size_t>(j)]);
      }
      serve({window_resource(kSlotMailboxSlot, k), window_resource(kSlotPayloadSlot, k), k, reads[static_cast<std::size_t>(k)]});
    }
    if (pid > 0) slot_of[pid] = k;
    else say(fmt::format("cannot start slot {}: {}", k, std::strerror(errno)));
  };
  // Its kernel reports free pages to the host (virtio-balloon), by default only free 2 MiB blocks:
  // what a slot's load frees lies scattered between the pages its engine keeps. Every free page,
  // then. (The balloon driver sets the order as it registers, over any command line.)
  if (std::ofstream order{"/sys/module/page_reporting/parameters/page_reporting_order"}; !(order << "0\n").flush())
    say("the kernel's free pages are not reported page by page (no page_reporting_order to set)");
  for (int k = 0; k < slots; ++k) start(k);
  say(fmt::format("serving {} slots of a shared repair VM", slots));
  for (;;) {
    int status = 0;
    pid_t pid = ::waitpid(-1, &status, 0);  // also the orphans of a slot that ended mid-crash
    if (pid < 0) {
      if (errno != EINTR) std::this_thread::sleep_for(std::chrono::seconds(1));
      continue;
    }
    if (pid == ringer) {
      say("the doorbell's process " + describe_exit(status) + ": started again");
      std::this_thread::sleep_for(std::chrono::seconds(1));
      start_ringer();
      continue;
    }
    auto it = slot_of.find(pid);
    if (it == slot_of.end()) continue;
    int k = it->second;
    slot_of.erase(it);
    // One that fails at once is not started again in a loop.
    if (std::chrono::steady_clock::now() - started[static_cast<std::size_t>(k)] < std::chrono::seconds(1))
      std::this_thread::sleep_for(std::chrono::seconds(1));
    start(k);
  }
}

// As /init of the repair VM. Never returns (pid 1 must not exit).
[[noreturn]] void run_in_vm() {
  ::mount("proc", "/proc", "proc", 0, nullptr);
  ::mount("sysfs", "/sys", "sysfs", 0, nullptr);
  int slots = 0;
  while (slots < kSharedSlots && ::access(window_resource(kSlotMailboxSlot, slots).c_str(), F_OK) == 0 &&
         ::access(window_resource(kSlotPayloadSlot, slots).c_str(), F_OK) == 0)
    ++slots;
  if (slots) serve_slots(slots);
  serve(Windows{});
}

}  // namespace
}  // namespace immortal::repair

int main(int argc, char** argv) {
  if (argc >= 2 && std::strcmp(argv[1], "--inline") == 0) return immortal::repair::run_inline(argc, argv);
  if (argc >= 2 && std::strcmp(argv[1], "--report") == 0) return immortal::repair::run_report(argc, argv);
  if (argc >= 2 && std::strcmp(argv[1], "--classify") == 0) return immortal::repair::run_classify(argc, argv);
  if (argc >= 2 && std::strcmp(argv[1], "--introspect") == 0) return immortal::repair::run_introspect(argc, argv);
  if (::getpid() == 1) immortal::repair::run_in_vm();
  std::fprintf(stderr, "usage: immortal-repair-agent --inline|--report|--classify|--introspect ... (or as /init of the repair image)\n");
  return 2;
}
