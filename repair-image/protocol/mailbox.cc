#include "protocol/mailbox.h"

#include <algorithm>
#include <cstring>
#include <stdexcept>

namespace immortal::repair {

namespace {

constexpr std::size_t kMagic = 0, kVersion = 4, kState = 8, kRequestSeq = 16, kResponseSeq = 24, kRequestLen = 32,
                      kResponseLen = 36, kStatus = 40, kStatusSize = 256, kVmcoreinfoAddress = 296,
                      kVmcoreinfoSize = 304, kAttachmentLen = 312, kSession = 320, kAgentSession = 328;
constexpr std::size_t kRequestArea = kMailboxData, kResponseArea = kMailboxData + kRequestMax;

}  // namespace

const char* to_string(AgentState state) {
  switch (state) {
    case AgentState::booting: return "booting";
    case AgentState::ready: return "ready";
    case AgentState::failed: return "failed";
    case AgentState::busy: return "busy";
    case AgentState::waiting: return "waiting";
  }
  return "?";
}

// The other side may be another process or a vCPU of another VM: every header word is accessed
// atomically, sequence numbers with acquire/release so the data they announce is visible.
template <typename T>
T Mailbox::load(std::size_t offset) const {
  return __atomic_load_n(reinterpret_cast<T*>(base_ + offset), __ATOMIC_ACQUIRE);
}

template <typename T>
void Mailbox::store(std::size_t offset, T value) {
  __atomic_store_n(reinterpret_cast<T*>(base_ + offset), value, __ATOMIC_RELEASE);
}

void Mailbox::initialise(std::uint64_t session) {
  std::memset(base_, 0, kMailboxData);
  store<std::uint64_t>(kSession, session);
  store<std::uint32_t>(kVersion, kMailboxVersion);
  store<std::uint32_t>(kMagic, kMailboxMagic);
}

bool Mailbox::valid() const {
  return load<std::uint32_t>(kMagic) == kMailboxMagic && load<std::uint32_t>(kVersion) == kMailboxVersion;
}

std::uint64_t Mailbox::session() const { return load<std::uint64_t>(kSession); }

bool Mailbox::for_this_session() const { return load<std::uint64_t>(kAgentSession) == load<std::uint64_t>(kSession); }

AgentState Mailbox::agent_state() const {
  if (!for_this_session()) return AgentState::booting;
  auto s = load<std::uint32_t>(kState);
  return s <= 4 ? static_cast<AgentState>(s) : AgentState::failed;
}

std::string Mailbox::agent_status() const {
  std::string s(reinterpret_cast<const char*>(base_ + kStatus), kStatusSize - 1);
  s.resize(std::min(s.size(), s.find('\0')));
  for (char& c : s)
    if (c < 0x20 || c > 0x7e) c = '?';
  return s;
}

std::uint64_t Mailbox::post_request(std::string_view json, std::string_view attachment) {
  if (json.size() > kRequestMax) throw std::runtime_error("repair request too large");
  if (attachment.size() > attachment_capacity()) throw std::runtime_error("repair request's attachment too large");
  std::memcpy(base_ + kRequestArea, json.data(), json.size());
  if (!attachment.empty()) std::memcpy(base_ + kMailboxSize, attachment.data(), attachment.size());
  store<std::uint64_t>(kAttachmentLen, attachment.size());
  store<std::uint32_t>(kRequestLen, static_cast<std::uint32_t>(json.size()));
  std::uint64_t seq = load<std::uint64_t>(kRequestSeq) + 1;
  store<std::uint64_t>(kRequestSeq, seq);
  return seq;
}

std::optional<std::string> Mailbox::take_response(std::uint64_t seq) const {
  if (load<std::uint64_t>(kResponseSeq) != seq || !for_this_session()) return std::nullopt;
  std::uint32_t n = load<std::uint32_t>(kResponseLen);
  if (n > kResponseMax) throw std::runtime_error("the repair agent's answer claims " + std::to_string(n) + " bytes");
  return std::string(reinterpret_cast<const char*>(base_ + kResponseArea), n);
}

std::pair<std::uint64_t, std::uint32_t> Mailbox::agent_vmcoreinfo() const {
  return {load<std::uint64_t>(kVmcoreinfoAddress), load<std::uint32_t>(kVmcoreinfoSize)};
}

void Mailbox::set_vmcoreinfo(std::uint64_t paddr, std::uint32_t size) {
  store<std::uint32_t>(kVmcoreinfoSize, size);
  store<std::uint64_t>(kVmcoreinfoAddress, paddr);
}

void Mailbox::set_state(AgentState state, std::string_view status) {
  std::size_t n = std::min(status.size(), kStatusSize - 1);
  std::memcpy(base_ + kStatus, status.data(), n);
  base_[kStatus + n] = 0;
  store<std::uint64_t>(kAgentSession, serving_);
  store<std::uint32_t>(kState, static_cast<std::uint32_t>(state));
}

std::uint64_t Mailbox::request_seq() const { return load<std::uint64_t>(kRequestSeq); }

std::string Mailbox::request() const {
  std::uint32_t n = std::min<std::uint32_t>(load<std::uint32_t>(kRequestLen), kRequestMax);
  return std::string(reinterpret_cast<const char*>(base_ + kRequestArea), n);
}

std::string_view Mailbox::attachment() const {
  std::uint64_t n = std::min<std::uint64_t>(load<std::uint64_t>(kAttachmentLen), attachment_capacity());
  return {reinterpret_cast<const char*>(base_ + kMailboxSize), static_cast<std::size_t>(n)};
}

void Mailbox::post_response(std::uint64_t seq, std::string_view json) {
  if (json.size() > kResponseMax) throw std::runtime_error("repair answer too large");
  std::memcpy(base_ + kResponseArea, json.data(), json.size());
  store<std::uint32_t>(kResponseLen, static_cast<std::uint32_t>(json.size()));
  store<std::uint64_t>(kAgentSession, serving_);
  store<std::uint64_t>(kResponseSeq, seq);
}

}  // namespace immortal::repair
