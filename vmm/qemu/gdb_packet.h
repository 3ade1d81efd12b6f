// The GDB Remote Serial Protocol's packet layer: "$payload#checksum" framing, '}' escaping,
// run-length encoding, acknowledgements, hex. Pure functions and a stream decoder, so that
// the codec is unit-tested on recorded and malformed input without a gdbstub.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace immortal::qemu {

inline constexpr std::size_t kMaxGdbPacket = 1 << 20;

std::string encode_gdb_packet(std::string_view payload);

// Splits the stub's byte stream into packet payloads. '+' and '-' acknowledgements are
// skipped; a bad checksum, a bad escape or an oversized packet throws Error(ExitCode::qemu).
class GdbPacketDecoder {
 public:
  void feed(std::string_view bytes) { buffer_.append(bytes); }
  std::optional<std::string> next();

 private:
  std::string buffer_;
};

// Undoes '}' escapes and '*' run-length encoding of a received payload.
std::string gdb_unescape(std::string_view raw);

// The value of a hex digit (either case), or -1.
int hex_digit(char c);

std::string to_hex(std::string_view bytes);
// nullopt for odd length or a non-hex digit.
std::optional<std::string> from_hex(std::string_view hex);
// A little-endian integer from target byte order hex ("efbeadde" -> 0xdeadbeef).
std::optional<std::uint64_t> le_hex_to_u64(std::string_view hex);

}  // namespace immortal::qemu
