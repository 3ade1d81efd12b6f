// The repair mailbox: a small shared-memory window through which the supervisor hands a crash
// to the repair agent and takes its answer (docs/protocol.md, "Repair protocol"). The repair VM
// sees it as a second ivshmem BAR; the inline repair process maps the same kind of memfd. Both
// sides poll sequence numbers, so the channel needs no driver in the repair VM and no interrupt.
//
// Layout (little-endian), kMailboxSize bytes:
//   0    u32 magic "IMRM"   u32 version   u32 agent state   u32 reserved
//   16   u64 request seq (host: bumped after the request is in place)
//   24   u64 response seq (agent: set to the request's seq after its answer is in place)
//   32   u32 request length  u32 response length
//   40   char status[256]    the agent's last word (ready summary, or why it failed)
//   296  u64 vmcoreinfo paddr  u32 vmcoreinfo size: where the repair VM's own kernel keeps its
//        VMCOREINFO note (/sys/kernel/vmcoreinfo), for the host to read its free pages; 0 when
//        not known (the inline agent, an older agent)
//   312  u64 attachment length (host: the request's binary attachment, set before its seq)
//   320  u64 session (host): which supervisor a slot of a shared repair VM serves now; 0 in a VM
//        of one guest. A new one (another supervisor took the slot) makes the agent start over.
//   328  u64 the session the agent's state and answer are for (agent): the host takes neither
//        while it differs from its own (what an agent of the slot's last user left behind)
//   4096                     request (JSON), at most kRequestMax bytes
//   4096 + kRequestMax       response (JSON), at most kResponseMax bytes
//   kMailboxSize             the request's attachment (a crash snapshot's page index), up to
//                            the end of a larger mailbox: none in a mailbox of kMailboxSize
// Everything the agent writes is untrusted by the host: lengths are checked against the areas.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <utility>

namespace immortal::repair {

inline constexpr std::uint64_t kMailboxSize = 4ull << 20;  // a power of two (ivshmem BAR)
inline constexpr std::uint32_t kMailboxMagic = 0x4d524d49;  // "IMRM"
inline constexpr std::uint32_t kMailboxVersion = 1;
inline constexpr std::size_t kMailboxData = 4096;
inline constexpr std::size_t kRequestMax = 1u << 20;
inline constexpr std::size_t kResponseMax = kMailboxSize - kMailboxData - kRequestMax;

// waiting: up, with no profile loaded, for the host's first load request (a repair VM that does
// not see the guest's RAM loads from a snapshot the host takes for it).
enum class AgentState : std::uint32_t { booting = 0, ready = 1, failed = 2, busy = 3, waiting = 4 };
const char* to_string(AgentState state);

class Mailbox {
 public:
  // base: `size` bytes of shared memory, at least kMailboxSize (beyond it: the attachment area).
  explicit Mailbox(void* base, std::uint64_t size = kMailboxSize) : base_(static_cast<unsigned char*>(base)), size_(size) {}

  // Host side.
  void initialise(std::uint64_t session = 0);  // zeroes the header, writes magic, version and session
  // booting while the agent has not yet said anything for this session.
  AgentState agent_state() const;
  std::string agent_status() const;  // printable, at most 255 characters
  // Where the repair VM's kernel keeps its VMCOREINFO note, as the agent says (untrusted): {0, 0} when unknown.
  std::pair<std::uint64_t, std::uint32_t> agent_vmcoreinfo() const;
  // Returns its sequence number. attachment: binary data for the request (throws
  // std::runtime_error when it does not fit the attachment area).
  std::uint64_t post_request(std::string_view json, std::string_view attachment = {});
  std::uint64_t attachment_capacity() const { return size_ > kMailboxSize ? size_ - kMailboxSize : 0; }
  // The answer to request seq, if it is there (throws std::runtime_error for a bad length).
  std::optional<std::string> take_response(std::uint64_t seq) const;

  // Agent side.
  bool valid() const;  // magic and version as the host wrote them
  std::uint64_t session() const;  // the host's
  // The session this agent serves: its states and answers say so from now on.
  void serve(std::uint64_t session) { serving_ = session; }
  void set_state(AgentState state, std::string_view status);
  void set_vmcoreinfo(std::uint64_t paddr, std::uint32_t size);
  std::uint64_t request_seq() const;
  std::string request() const;  // the current request (bounded by kRequestMax)
  // The current request's attachment, in place (its length bounded by the area; empty when none).
  std::string_view attachment() const;
  void post_response(std::uint64_t seq, std::string_view json);  // truncated answers are refused

 private:
  template <typename T>
  T load(std::size_t offset) const;
  template <typename T>
  void store(std::size_t offset, T value);
  bool for_this_session() const;
  unsigned char* base_;
  std::uint64_t size_;
  std::uint64_t serving_ = 0;
};

}  // namespace immortal::repair
