// A client of QEMU's gdbstub (GDB Remote Serial Protocol over a UNIX socket), used for what
// only the gdbstub offers: per-vCPU registers and breakpoints.
//
// QEMU's gdbstub stops the VM whenever a byte arrives while it runs (gdbstub.c, gdb_read_byte),
// so every request here must be made with the VM paused; QemuMachine enforces that. The stub
// also sends a stop reply ("T05thread:02;") on its own whenever the VM stops: those are queued
// as stop notifications, not taken for the answer to a request.
#pragma once

#include "base/io.h"
#include "base/unique_fd.h"
#include "qemu/gdb_packet.h"

#include <cstdint>
#include <deque>
#include <span>
#include <string>
#include <vector>

namespace immortal::qemu {

struct GdbStop {
  int signal = 0;     // 5 = SIGTRAP (breakpoint), 2 = SIGINT (paused)
  int thread = -1;    // QEMU thread id = vCPU index + 1; -1 if absent
  std::string raw;
};
// Parses "T05thread:02;..." or "S05"; nullopt for anything else.
std::optional<GdbStop> parse_gdb_stop(std::string_view payload);

class GdbstubClient {
 public:
  GdbstubClient(UniqueFd socket, Deadline deadline);

  // Thread ids of all vCPUs (qfThreadInfo/qsThreadInfo).
  std::vector<int> threads(Deadline deadline);
  // The raw "g" block of one thread (hex-decoded).
  std::string read_registers(int thread, Deadline deadline);
  void write_registers(int thread, const std::string& block, Deadline deadline);
  void insert_hw_breakpoint(std::uint64_t address, Deadline deadline);
  void remove_hw_breakpoint(std::uint64_t address, Deadline deadline);
  // Writes memory at a virtual address in that thread's (vCPU's) view ("M" packet).
  void write_memory(int thread, std::uint64_t address, std::span<const std::uint8_t> bytes, Deadline deadline);

  int fd() const { return socket_.get(); }
  // True once QEMU closed the stub's socket (it exited): nothing more will come.
  bool closed() const { return closed_; }
  // Reads what is available without blocking and returns stop notifications received.
  std::vector<GdbStop> take_stops();

  // One request, one answer (stop notifications are queued). Throws on timeout or an "E.." answer
  // when check is set.
  std::string request(const std::string& payload, Deadline deadline, bool check = true);

 private:
  bool pump(Deadline deadline);
  void select_thread(int thread, Deadline deadline);

  UniqueFd socket_;
  GdbPacketDecoder decoder_;
  std::deque<GdbStop> stops_;
  bool no_ack_ = false;
  bool closed_ = false;
  int selected_thread_ = 0;
};

}  // namespace immortal::qemu
