#include "qemu/gdbstub_client.h"

#include "base/error.h"

#include <fmt/format.h>

namespace immortal::qemu {

namespace {
// A thread id as QEMU writes it: hex, optionally "pPID.TID" (multiprocess form).
std::optional<int> parse_thread_id(std::string_view text) {
  if (auto dot = text.find('.'); dot != std::string_view::npos) text = text.substr(dot + 1);
  if (text.empty() || text.size() > 6) return std::nullopt;
  int tid = 0;
  for (char c : text) {
    int d = hex_digit(c);
    if (d < 0) return std::nullopt;
    tid = tid * 16 + d;
  }
  return tid;
}
}  // namespace

std::optional<GdbStop> parse_gdb_stop(std::string_view payload) {
  if (payload.size() < 3 || (payload[0] != 'T' && payload[0] != 'S')) return std::nullopt;
  auto sig = le_hex_to_u64(payload.substr(1, 2));
  if (!sig) return std::nullopt;
  GdbStop stop{static_cast<int>(*sig), -1, std::string(payload)};
  auto pos = payload.find("thread:");
  if (pos != std::string_view::npos) {
    auto value = payload.substr(pos + 7);
    if (auto tid = parse_thread_id(value.substr(0, value.find(';')))) stop.thread = *tid;
  }
  return stop;
}

GdbstubClient::GdbstubClient(UniqueFd socket, Deadline deadline) : socket_(std::move(socket)) {
  set_nonblocking(socket_.get(), true);
  request("qSupported:xmlRegisters=i386", deadline, false);
  if (request("QStartNoAckMode", deadline, false) == "OK") no_ack_ = true;
  // Reading the target description switches QEMU's stub to the full x86-64 register set.
  request("qXfer:features:read:target.xml:0,fff", deadline, false);
}

bool GdbstubClient::pump(Deadline deadline) {
  if (!wait_readable(socket_.get(), deadline)) return false;
  bool would_block = false;
  std::string data = read_some(socket_.get(), 65536, &would_block);
  if (would_block) return true;
  if (data.empty()) fail(ExitCode::qemu, "gdbstub: connection closed by QEMU");
  decoder_.feed(data);
  return true;
}

std::string GdbstubClient::request(const std::string& payload, Deadline deadline, bool check) {
  write_all(socket_.get(), encode_gdb_packet(payload), deadline);
  bool wants_stop = payload == "?";
  for (;;) {
    while (auto packet = decoder_.next()) {
      if (!no_ack_) write_all(socket_.get(), "+", deadline);
      if (!wants_stop) {
        if (auto stop = parse_gdb_stop(*packet)) {
          stops_.push_back(*stop);
          continue;
        }
      }
      if (check && packet->size() == 3 && (*packet)[0] == 'E')
        fail(ExitCode::qemu, "gdbstub refused \"{}\": error {}", payload.substr(0, 40), packet->substr(1));
      return *packet;
    }
    if (!pump(deadline)) fail(ExitCode::timeout, "gdbstub: no answer to \"{}\" in time", payload.substr(0, 40));
  }
}

std::vector<int> GdbstubClient::threads(Deadline deadline) {
  std::vector<int> out;
  std::string reply = request("qfThreadInfo", deadline);
  for (int round = 0; round < 1024 && !reply.empty() && reply[0] == 'm'; ++round) {
    std::string_view list(reply);
    list.remove_prefix(1);
    while (!list.empty()) {
      auto comma = list.find(',');
      auto tid = parse_thread_id(list.substr(0, comma));
      if (!tid) fail(ExitCode::qemu, "gdbstub: bad thread id in \"{}\"", reply);
      out.push_back(*tid);
      if (comma == std::string_view::npos) break;
      list.remove_prefix(comma + 1);
    }
    reply = request("qsThreadInfo", deadline);
  }
  return out;
}

void GdbstubClient::select_thread(int thread, Deadline deadline) {
  if (selected_thread_ == thread) return;
  if (request(fmt::format("Hg{:x}", thread), deadline) != "OK")
    fail(ExitCode::qemu, "gdbstub: cannot select thread {}", thread);
  selected_thread_ = thread;
}

std::string GdbstubClient::read_registers(int thread, Deadline deadline) {
  select_thread(thread, deadline);
  auto block = from_hex(request("g", deadline));
  if (!block) fail(ExitCode::qemu, "gdbstub: malformed register block");
  return *block;
}

void GdbstubClient::write_registers(int thread, const std::string& block, Deadline deadline) {
  select_thread(thread, deadline);
  if (request("G" + to_hex(block), deadline) != "OK")
    fail(ExitCode::qemu, "gdbstub: register write refused for thread {}", thread);
}

void GdbstubClient::insert_hw_breakpoint(std::uint64_t address, Deadline deadline) {
  if (request(fmt::format("Z1,{:x},1", address), deadline) != "OK")
    fail(ExitCode::qemu, "gdbstub: cannot set a hardware breakpoint at {:#x}", address);
}

void GdbstubClient::remove_hw_breakpoint(std::uint64_t address, Deadline deadline) {
  if (request(fmt::format("z1,{:x},1", address), deadline) != "OK")
    fail(ExitCode::qemu, "gdbstub: cannot remove the breakpoint at {:#x}", address);
}

void GdbstubClient::write_memory(int thread, std::uint64_t address, std::span<const std::uint8_t> bytes,
                                 Deadline deadline) {
  select_thread(thread, deadline);
  std::string packet = fmt::format("M{:x},{:x}:", address, bytes.size()) +
                       to_hex({reinterpret_cast<const char*>(bytes.data()), bytes.size()});
  if (request(packet, deadline) != "OK") fail(ExitCode::qemu, "gdbstub: cannot write guest memory at {:#x}", address);
}

std::vector<GdbStop> GdbstubClient::take_stops() {
  // A QEMU that exits closes the socket, sometimes right after a last packet: the end of the
  // machine, which QMP reports; never an error of ours.
  while (!closed_) {
    bool would_block = false;
    std::string data;
    try {
      data = read_some(socket_.get(), 65536, &would_block);
    } catch (const Error&) {
      closed_ = true;
      break;
    }
    if (would_block) break;
    if (data.empty()) {
      closed_ = true;
      break;
    }
    decoder_.feed(data);
  }
  while (auto packet = decoder_.next()) {
    if (!no_ack_ && !closed_) {
      try {
        write_all(socket_.get(), "+");
      } catch (const Error&) {
        closed_ = true;
      }
    }
    if (auto stop = parse_gdb_stop(*packet)) stops_.push_back(*stop);
  }
  std::vector<GdbStop> out(stops_.begin(), stops_.end());
  stops_.clear();
  return out;
}

}  // namespace immortal::qemu
