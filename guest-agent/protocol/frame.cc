#include "protocol/frame.h"

#include <algorithm>

#include <string>

namespace immortal::agent {

bool is_known(MessageType type) {
  auto v = static_cast<std::uint16_t>(type);
  return v >= 1 && v <= 12;
}

const char* name_of(MessageType type) {
  switch (type) {
    case MessageType::hello: return "hello";
    case MessageType::heartbeat: return "heartbeat";
    case MessageType::ping: return "ping";
    case MessageType::pong: return "pong";
    case MessageType::exec: return "exec";
    case MessageType::exec_result: return "exec-result";
    case MessageType::error: return "error";
    case MessageType::poweroff: return "poweroff";
    case MessageType::spawn: return "spawn";
    case MessageType::spawned: return "spawned";
    case MessageType::read_file: return "read-file";
    case MessageType::file_data: return "file-data";
  }
  return "unknown";
}

static void put_le(std::string& out, std::uint64_t v, int bytes) {
  for (int i = 0; i < bytes; ++i) out.push_back(static_cast<char>((v >> (8 * i)) & 0xff));
}

static std::uint64_t get_le(std::string_view in, std::size_t at, int bytes) {
  std::uint64_t v = 0;
  for (int i = 0; i < bytes; ++i)
    v |= static_cast<std::uint64_t>(static_cast<unsigned char>(in[at + i])) << (8 * i);
  return v;
}

std::string supported_versions() {
  if (kOldestProtocolVersion == kProtocolVersion) return std::to_string(kProtocolVersion);
  return std::to_string(kOldestProtocolVersion) + " to " + std::to_string(kProtocolVersion);
}

std::string encode_frame(MessageType type, std::string_view payload, std::uint16_t version) {
  if (payload.size() > kMaxPayload) throw ProtocolError("frame payload too large to send");
  if (!is_supported_version(version)) throw ProtocolError("cannot send protocol version " + std::to_string(version));
  std::string out;
  out.reserve(kHeaderSize + payload.size());
  put_le(out, kMagic, 4);
  put_le(out, version, 2);
  put_le(out, static_cast<std::uint16_t>(type), 2);
  put_le(out, payload.size(), 4);
  out.append(payload);
  return out;
}

void FrameDecoder::feed(std::string_view bytes) {
  if (broken_) return;
  // Compact lazily so a long stream of small frames does not grow the buffer.
  if (start_ > 0 && start_ >= buffer_.size() / 2) {
    buffer_.erase(0, start_);
    start_ = 0;
  }
  buffer_.append(bytes);
}

std::optional<Frame> FrameDecoder::next() {
  if (broken_) throw ProtocolError(*broken_);
  std::string_view pending(buffer_);
  pending.remove_prefix(start_);
  if (pending.size() < kHeaderSize) return std::nullopt;
  auto magic = get_le(pending, 0, 4);
  auto version = get_le(pending, 4, 2);
  auto type = static_cast<MessageType>(get_le(pending, 6, 2));
  auto length = get_le(pending, 8, 4);
  if (magic != kMagic)
    broken_ = "bad frame magic " + std::to_string(magic) + " (not an immortal agent?)";
  else if (!is_supported_version(version))
    broken_ = "unsupported protocol version " + std::to_string(version) + " (this build speaks " +
              supported_versions() + ")";
  else if (!is_known(type))
    broken_ = "unknown message type " + std::to_string(static_cast<unsigned>(type));
  else if (length > max_payload_)
    broken_ = "frame of " + std::to_string(length) + " bytes exceeds the limit of " +
              std::to_string(max_payload_);
  if (broken_) throw ProtocolError(*broken_);
  if (pending.size() < kHeaderSize + length) return std::nullopt;
  Frame frame{type, std::string(pending.substr(kHeaderSize, length)), static_cast<std::uint16_t>(version)};
  start_ += kHeaderSize + length;
  // Everything read: a buffer that large frames (a profile's chunks) grew is given back, not kept
  // for the heartbeats that follow (≈ 0.8 MiB of every supervisor).
  if (start_ == buffer_.size() && buffer_.capacity() > kKeptCapacity) {
    std::string().swap(buffer_);
    start_ = 0;
  }
  return frame;
}

std::size_t FrameDecoder::resync() {
  broken_.reset();
  std::string_view pending(buffer_);
  pending.remove_prefix(start_);
  const char magic[4] = {'I', 'M', 'R', 'T'};
  std::size_t at = pending.size() > 1 ? pending.find(std::string_view(magic, 4), 1) : std::string_view::npos;
  std::size_t dropped = at;
  if (at == std::string_view::npos) {
    // No magic yet: keep only an end that may begin one (cut across reads).
    std::size_t keep = 3;
    while (keep > 0 && (pending.size() <= keep || pending.substr(pending.size() - keep) != std::string_view(magic, keep)))
      --keep;
    dropped = std::max<std::size_t>(pending.size() - keep, pending.empty() ? 0 : 1);
  }
  start_ += dropped;
  return dropped;
}

}  // namespace immortal::agent
