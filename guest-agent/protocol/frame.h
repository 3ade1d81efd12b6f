// Framing of the agent protocol (docs/protocol.md): a 12-byte little-endian header
//   magic "IMRT" (u32) | version (u16) | type (u16) | payload length (u32)
// followed by the payload, a UTF-8 JSON object. Shared by the guest agent and the host.
//
// The host treats every frame as untrusted: a wrong magic or version, an unknown type or a
// payload over kMaxPayload is a ProtocolError, and the decoder refuses anything after it until
// resync() finds the next frame start.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>

namespace immortal::agent {

inline constexpr char kPortName[] = "org.immortal.agent.0";  // virtio-serial port name
inline constexpr std::uint32_t kMagic = 0x54524d49;         // "IMRT" read as little-endian
// Every version this build speaks, oldest to newest. An agent sends its version in every frame
// header and in its hello; the host answers each agent in the version it spoke, so guests keep the
// agent they booted with across upgrades of the host. A new version raises kProtocolVersion; the
// oldest still spoken is kOldestProtocolVersion (docs/protocol.md, "Versions").
inline constexpr std::uint16_t kOldestProtocolVersion = 1;
inline constexpr std::uint16_t kProtocolVersion = 1;  // the newest; what this build's agent sends
constexpr bool is_supported_version(std::uint64_t version) {
  return version >= kOldestProtocolVersion && version <= kProtocolVersion;
}
// "1" or "1 to 3", for messages about a version this build does not speak.
std::string supported_versions();
inline constexpr std::size_t kHeaderSize = 12;
inline constexpr std::size_t kMaxPayload = 1 << 20;

enum class MessageType : std::uint16_t {
  hello = 1,        // agent → host, once per connection
  heartbeat = 2,    // agent → host, every second
  ping = 3,         // host → agent
  pong = 4,         // agent → host
  exec = 5,         // host → agent: run a command
  exec_result = 6,  // agent → host
  error = 7,        // either way: a request could not be served
  poweroff = 8,     // host → agent: power the guest off cleanly
  spawn = 9,        // host → agent: start a command and do not wait for it
  spawned = 10,     // agent → host: the pid it started (or why not)
  read_file = 11,   // host → agent: a chunk of a guest file (the healthy-guest profile)
  file_data = 12,   // agent → host
};
bool is_known(MessageType type);
const char* name_of(MessageType type);

class ProtocolError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

struct Frame {
  MessageType type{};
  std::string payload;
  std::uint16_t version = kProtocolVersion;  // of the header it came in
};

std::string encode_frame(MessageType type, std::string_view payload, std::uint16_t version = kProtocolVersion);

// Incremental decoder: feed() whatever bytes arrived, then next() until it returns nothing.
class FrameDecoder {
 public:
  explicit FrameDecoder(std::size_t max_payload = kMaxPayload) : max_payload_(max_payload) {}
  void feed(std::string_view bytes);
  // The next complete frame; throws ProtocolError for a malformed one (then and afterwards).
  std::optional<Frame> next();
  std::size_t buffered() const { return buffer_.size() - start_; }
  std::size_t held_bytes() const { return buffer_.capacity(); }  // memory the buffer keeps
  // After a ProtocolError, or a frame that never completes (torn by a guest reset or an agent
  // restart): drops the frame that begins at the current position and scans on for the next
  // magic (from its second byte). Returns how many bytes were dropped; the decoder works again.
  std::size_t resync();

 private:
  std::size_t max_payload_;
  static constexpr std::size_t kKeptCapacity = 64 * 1024;
  std::string buffer_;
  std::size_t start_ = 0;
  std::optional<std::string> broken_;
};

}  // namespace immortal::agent
