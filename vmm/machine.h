// The Machine seam: control of one virtual machine, whatever runs it. The supervisor, the
// recovery code and the tests use only this; QEMU details stay in vmm/qemu/.
//
// All vCPU operations (registers, breakpoints) require the machine to be paused: a backend may
// refuse them while the guest runs.
#pragma once

#include "base/io.h"
#include "base/unique_fd.h"
#include "memory/physical_memory.h"
#include "memory/shared_ram.h"
#include "x86_64/registers.h"

#include <nlohmann/json.hpp>

#include <chrono>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <vector>

namespace immortal::vmm {

enum class RunState {
  starting,  // created, firmware not yet running
  running,
  paused,    // stopped by us (pause(), a breakpoint) with state intact
  panicked,  // the guest reported a panic (pvpanic) and was stopped
  shutdown,  // the guest powered off or reset itself to death; the VM process is gone or going
};
const char* to_string(RunState state);

struct MachineEvent {
  enum class Kind {
    paused,          // the VM stopped (any reason below is reported as its own event)
    resumed,
    breakpoint,      // a vCPU hit a breakpoint we set; vcpu says which
    guest_panicked,  // pvpanic
    reset,
    shutdown,        // the guest powered itself off
    vm_exited,       // the VM process ended without the guest powering off (killed, crashed, told to quit)
  };
  Kind kind;
  int vcpu = -1;        // for breakpoint
  std::string detail;   // backend-specific description, for logs
};
const char* to_string(MachineEvent::Kind kind);

// A guest's downtime on the hypervisor's clock (Machine::last_stop_time, last_resume_time): from
// the earlier of its stop stamp and `stopped_by` (when the supervisor knew it stopped: the news
// of a breakpoint, the answer to pause()) to its resume stamp. nullopt when a stamp is missing or
// does not fit around the supervisor's own times: the stop stamp must lie between `stop_from`
// and 100 ms after `stopped_by`, the resume stamp between `resume_asked` and now.
std::optional<double> hypervisor_downtime_ms(std::optional<std::chrono::steady_clock::time_point> stop_stamp,
                                             std::chrono::steady_clock::time_point stop_from,
                                             std::chrono::steady_clock::time_point stopped_by,
                                             std::optional<std::chrono::steady_clock::time_point> resume_stamp,
                                             std::chrono::steady_clock::time_point resume_asked);

class Machine {
 public:
  virtual ~Machine() = default;

  // Lifecycle.
  virtual void resume() = 0;
  virtual void pause() = 0;
  virtual RunState state() = 0;
  // When the vCPUs last stopped (all of them) and were last set running, on the hypervisor's own
  // clock: the moments the guest felt. The answer to pause() or resume(), or the news of a
  // breakpoint, reaches the supervisor later — after a resume, once the guest's vCPU threads
  // let it have a core. nullopt when the backend cannot tell.
  virtual std::optional<std::chrono::steady_clock::time_point> last_stop_time() { return std::nullopt; }
  virtual std::optional<std::chrono::steady_clock::time_point> last_resume_time() { return std::nullopt; }
  // Stops the VM for good: polite request first (bounded by grace), then force. Never throws.
  virtual void terminate(std::chrono::milliseconds grace) = 0;
  // The backend's name, as `immortal run --backend` takes it ("qemu").
  virtual const char* backend() const = 0;
  // What this backend can do beyond the basics; callers ask before they rely on it.
  struct Capabilities {
    bool breakpoints = false;  // hardware breakpoints: crashes caught at their first instruction
    bool native_dump = false;  // write_native_dump()
    bool shared_ram = false;   // ram_file(): the repair VM or process can map guest RAM
    bool attach = false;       // a later supervisor can take the VM over (attach_handle())
    // The VM is ours: stopping the supervisor powers it off. false for a VM someone else manages
    // (a libvirt domain): stopping lets go of it, and only an explicit request shuts it down.
    bool owns_vm = true;
  };
  virtual Capabilities capabilities() const = 0;
  // The VM process id, for status displays (0 where there is none).
  virtual int process_id() const = 0;
  // What another supervisor needs to take this VM over (backend-specific; see attach in
  // machine_backends.h), and the run state it found when it attached (nullopt: it launched it).
  virtual nlohmann::json attach_handle() const = 0;
  virtual std::optional<RunState> state_before_attach() const { return std::nullopt; }
  // Lets go of the VM without stopping it: the supervisor ends, the guest runs on (to be
  // attached again). The Machine is unusable afterwards.
  virtual void release() = 0;

  // vCPUs (paused only).
  virtual int vcpu_count() const = 0;
  virtual X86Registers read_registers(int vcpu) = 0;
  virtual void write_registers(int vcpu, const X86Registers& registers) = 0;
  virtual void insert_breakpoint(std::uint64_t guest_virtual) = 0;
  virtual void remove_breakpoint(std::uint64_t guest_virtual) = 0;
  // Writes guest memory at a virtual address as the vCPU sees it, the way a debugger does: the
  // backend keeps whatever it caches about guest code (QEMU TCG's translated blocks) coherent.
  // Use it for code patches; plain data can go through memory().
  virtual void write_virtual(int vcpu, std::uint64_t guest_virtual, std::span<const std::uint8_t> bytes) = 0;
  // A hardware reset of the whole machine (the guest reboots); the VM keeps its run state.
  virtual void reset() = 0;

  // Guest-physical memory, live (works running or paused).
  virtual PhysicalMemory& memory() = 0;
  // The file guest RAM lives in, for another VM or process to map (the repair VM, the inline
  // repair process); nullopt if the backend has none.
  struct RamFile {
    int fd = -1;
    std::uint64_t size = 0;
    std::vector<RamSegment> segments;  // guest-physical ranges and where they are in the file
  };
  virtual std::optional<RamFile> ram_file() const { return std::nullopt; }

  // Events: poll these descriptors for readability, then call drain_events().
  virtual std::vector<int> event_fds() const = 0;
  virtual std::vector<MachineEvent> drain_events() = 0;

  // Writes an ELF core of guest memory the way the backend does natively (QEMU:
  // dump-guest-memory), for comparisons and as a fallback dump. The guest is stopped meanwhile.
  virtual void write_native_dump(const std::string& path) = 0;

  // A byte stream to the guest agent's port (the backend wires the port to the VM).
  virtual UniqueFd connect_agent_channel(Deadline deadline) = 0;

  // Leaves a short account of the VM's protection where the VM's manager shows it to others
  // (libvirt: the domain's live metadata, which `immortal list --connect URI` reads from any
  // host); nothing for a backend without one. Never throws: it is an account, not a duty.
  virtual void annotate(const nlohmann::json& protection) { (void)protection; }

  // Where an interactive client reaches the guest's serial console: a UNIX stream socket that
  // serves one client at a time (empty: this VM has none, e.g. one started by an older immortal).
  virtual std::string console_socket() const { return ""; }
};

}  // namespace immortal::vmm
