#include "qemu/gdb_packet.h"

#include "base/error.h"

namespace immortal::qemu {

int hex_digit(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

namespace {
constexpr char kHex[] = "0123456789abcdef";
}  // namespace

std::string encode_gdb_packet(std::string_view payload) {
  std::string body;
  for (char c : payload) {
    if (c == '$' || c == '#' || c == '}' || c == '*') {
      body.push_back('}');
      body.push_back(static_cast<char>(c ^ 0x20));
    } else {
      body.push_back(c);
    }
  }
  unsigned sum = 0;
  for (char c : body) sum += static_cast<unsigned char>(c);
  std::string out = "$" + body + "#";
  out.push_back(kHex[(sum >> 4) & 0xf]);
  out.push_back(kHex[sum & 0xf]);
  return out;
}

std::string gdb_unescape(std::string_view raw) {
  std::string out;
  for (std::size_t i = 0; i < raw.size(); ++i) {
    char c = raw[i];
    if (c == '}') {
      if (++i == raw.size()) fail(ExitCode::qemu, "gdbstub: packet ends in an escape");
      out.push_back(static_cast<char>(raw[i] ^ 0x20));
    } else if (c == '*') {
      // Run-length: the previous character repeated (next char - 29) more times.
      if (out.empty() || ++i == raw.size()) fail(ExitCode::qemu, "gdbstub: bad run-length encoding");
      int count = static_cast<unsigned char>(raw[i]) - 29;
      if (count < 3 || count > 97) fail(ExitCode::qemu, "gdbstub: bad run-length count");
      if (out.size() + static_cast<std::size_t>(count) > kMaxGdbPacket)
        fail(ExitCode::qemu, "gdbstub: packet too large");
      out.append(static_cast<std::size_t>(count), out.back());
    } else {
      out.push_back(c);
    }
  }
  return out;
}

std::optional<std::string> GdbPacketDecoder::next() {
  for (;;) {
    // Skip acknowledgements and line noise up to the next packet start.
    auto start = buffer_.find('$');
    if (start == std::string::npos) {
      if (buffer_.size() > kMaxGdbPacket) fail(ExitCode::qemu, "gdbstub: garbage without packets");
      buffer_.clear();
      return std::nullopt;
    }
    auto hash = buffer_.find('#', start);
    if (hash == std::string::npos) {
      if (buffer_.size() - start > kMaxGdbPacket) fail(ExitCode::qemu, "gdbstub: packet too large");
      buffer_.erase(0, start);
      return std::nullopt;
    }
    if (buffer_.size() < hash + 3) {
      buffer_.erase(0, start);
      return std::nullopt;
    }
    std::string_view body(buffer_.data() + start + 1, hash - start - 1);
    int hi = hex_digit(buffer_[hash + 1]), lo = hex_digit(buffer_[hash + 2]);
    unsigned sum = 0;
    for (char c : body) sum += static_cast<unsigned char>(c);
    if (hi < 0 || lo < 0 || static_cast<unsigned>(hi * 16 + lo) != (sum & 0xff))
      fail(ExitCode::qemu, "gdbstub: packet checksum mismatch");
    std::string payload = gdb_unescape(body);
    buffer_.erase(0, hash + 3);
    return payload;
  }
}

std::string to_hex(std::string_view bytes) {
  std::string out;
  out.reserve(bytes.size() * 2);
  for (unsigned char c : bytes) {
    out.push_back(kHex[c >> 4]);
    out.push_back(kHex[c & 0xf]);
  }
  return out;
}

std::optional<std::string> from_hex(std::string_view hex) {
  if (hex.size() % 2) return std::nullopt;
  std::string out;
  out.reserve(hex.size() / 2);
  for (std::size_t i = 0; i < hex.size(); i += 2) {
    int hi = hex_digit(hex[i]), lo = hex_digit(hex[i + 1]);
    if (hi < 0 || lo < 0) return std::nullopt;
    out.push_back(static_cast<char>(hi * 16 + lo));
  }
  return out;
}

std::optional<std::uint64_t> le_hex_to_u64(std::string_view hex) {
  auto bytes = from_hex(hex);
  if (!bytes || bytes->size() > 8) return std::nullopt;
  std::uint64_t v = 0;
  for (std::size_t i = 0; i < bytes->size(); ++i)
    v |= static_cast<std::uint64_t>(static_cast<unsigned char>((*bytes)[i])) << (8 * i);
  return v;
}

}  // namespace immortal::qemu
