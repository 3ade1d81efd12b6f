// Fuzz target: the host's view of bytes coming from the guest agent. Feeds arbitrary bytes to
// the frame decoder in arbitrary slices and every decoded payload to every message parser.
// Nothing may crash, hang or allocate without bound; only ProtocolError may escape a parser, and
// resynchronising after a broken frame always makes progress.
#include "protocol/frame.h"
#include "protocol/messages.h"

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string_view>

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using namespace immortal::agent;
  std::string_view bytes(reinterpret_cast<const char*>(data), size);
  FrameDecoder decoder(64 * 1024);
  // The first byte chooses how the stream is sliced, as reads from a socket would.
  std::size_t slice = size ? (static_cast<std::size_t>(data[0]) % 17) + 1 : 1;
  // As the host does: a broken frame is skipped with resync() and decoding goes on. Every resync
  // drops at least one byte, so the loop ends.
  std::size_t resyncs = 0;
  for (std::size_t at = 0; at < bytes.size(); at += slice) {
    decoder.feed(bytes.substr(at, slice));
    for (;;) {
      std::optional<Frame> frame;
      try {
        frame = decoder.next();
      } catch (const ProtocolError&) {
        std::size_t before = decoder.buffered();
        decoder.resync();
        if (before && decoder.buffered() >= before) __builtin_trap();  // no progress: would spin
        ++resyncs;
        continue;
      }
      if (!frame) break;
      auto parse_all = [&](auto parse) {
        try {
          parse(frame->payload);
        } catch (const ProtocolError&) {
        }
      };
      parse_all(parse_hello);
      parse_all(parse_heartbeat);
      parse_all(parse_ping);
      parse_all(parse_exec_request);
      parse_all(parse_exec_result);
      parse_all(parse_error);
      parse_all(parse_spawn_request);
      parse_all(parse_spawned);
    }
  }
  if (resyncs > bytes.size()) __builtin_trap();
  return 0;
}
