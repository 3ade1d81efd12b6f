// The gdbstub codec, on packets recorded from QEMU 7.2 and on broken ones.
#include "base/error.h"
#include "qemu/gdb_packet.h"
#include "qemu/gdbstub_client.h"
#include "qemu/x86_64_gdb_layout.h"

#include <catch2/catch.hpp>

using namespace immortal;
using namespace immortal::qemu;

TEST_CASE("packets are framed, escaped and checksummed", "[gdb]") {
  CHECK(encode_gdb_packet("g") == "$g#67");
  CHECK(encode_gdb_packet("qSupported") == "$qSupported#37");
  // '#', '$', '}' and '*' are escaped as '}' followed by the byte xor 0x20.
  CHECK(encode_gdb_packet("a#b") == "$a}\x03" "b#43");
  GdbPacketDecoder d;
  d.feed(encode_gdb_packet("x}y$z*"));
  CHECK(d.next() == std::string("x}y$z*"));
}

TEST_CASE("the decoder skips acks, splits packets and expands run-length encoding", "[gdb]") {
  GdbPacketDecoder d;
  // As QEMU sends them: an ack, an unsolicited stop reply, then an answer.
  d.feed("+$T02thread:01;#04+$OK#9a");
  auto first = d.next();
  REQUIRE(first.has_value());
  CHECK(*first == "T02thread:01;");
  CHECK(d.next() == std::string("OK"));
  CHECK_FALSE(d.next().has_value());
  // "0* " is '0' repeated 3 more times (' ' - 29 = 3).
  CHECK(gdb_unescape("0* ") == "0000");
}

TEST_CASE("a corrupted packet is an error, not data", "[gdb]") {
  GdbPacketDecoder d;
  d.feed("$OK#00");
  CHECK_THROWS_AS(d.next(), Error);
  CHECK_THROWS_AS(gdb_unescape("abc}"), Error);
  CHECK_THROWS_AS(gdb_unescape("*x"), Error);
  GdbPacketDecoder big;
  big.feed("$" + std::string(kMaxGdbPacket + 10, 'a'));
  CHECK_THROWS_AS(big.next(), Error);
}

TEST_CASE("stop replies name the signal and the vCPU thread", "[gdb]") {
  auto stop = parse_gdb_stop("T05thread:02;");
  REQUIRE(stop);
  CHECK(stop->signal == 5);
  CHECK(stop->thread == 2);
  auto mp = parse_gdb_stop("T05thread:p01.0a;swbreak:;");
  REQUIRE(mp);
  CHECK(mp->thread == 10);
  CHECK(parse_gdb_stop("S02")->thread == -1);
  CHECK_FALSE(parse_gdb_stop("OK"));
  CHECK_FALSE(parse_gdb_stop("Tzz"));
}

TEST_CASE("hex helpers refuse what is not hex", "[gdb]") {
  CHECK(from_hex("00ff41") == std::string("\x00\xff" "A", 3));
  CHECK_FALSE(from_hex("0").has_value());
  CHECK_FALSE(from_hex("zz").has_value());
  CHECK(le_hex_to_u64("efbeadde") == 0xdeadbeefu);
  CHECK_FALSE(le_hex_to_u64("001122334455667788").has_value());
}

TEST_CASE("QEMU's x86-64 register block decodes by its own numbering", "[gdb]") {
  REQUIRE(x86_64_gdb_block_size() == 608);  // what QEMU 7.2 sends for "g"
  std::string block(608, '\0');
  auto put = [&](std::size_t offset, std::uint64_t v, std::size_t n) {
    for (std::size_t i = 0; i < n; ++i) block[offset + i] = static_cast<char>(v >> (8 * i));
  };
  put(16 * 8, 0xffffffff81000000ull, 8);  // rip
  put(17 * 8, 0x246, 4);                   // eflags
  put(136 + 7 * 4 + 5 * 8, 0x1234000, 8);  // cr3: after fs_base, gs_base, k_gs_base, cr0, cr2
  X86Registers r = decode_x86_64_registers(block);
  CHECK(r.rip == 0xffffffff81000000ull);
  CHECK(r.rflags == 0x246);
  CHECK(r.cr3 == 0x1234000);
  r.rdi = 9;
  encode_x86_64_registers(r, block);
  CHECK(decode_x86_64_registers(block).rdi == 9);
  CHECK_THROWS_WITH(decode_x86_64_registers(std::string(632, '\0')), Catch::Contains("expected 608"));
}
