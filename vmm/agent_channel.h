// The host end of the guest agent's channel: frames in and out, every message from the guest
// validated (it is untrusted), hello and heartbeats tracked, requests matched to answers.
#pragma once

#include "base/io.h"
#include "base/unique_fd.h"
#include "protocol/frame.h"
#include "protocol/messages.h"

#include <chrono>
#include <functional>
#include <map>
#include <optional>
#include <set>
#include <string>

namespace immortal::vmm {

class AgentChannel {
 public:
  using ExecCallback = std::function<void(const agent::ExecResult*, const std::string& error)>;

  // torn_after: how long a frame may stay incomplete while later bytes arrive before it counts
  // as torn (the bytes up to the next frame are dropped).
  explicit AgentChannel(UniqueFd stream, std::chrono::milliseconds torn_after = std::chrono::seconds(10));

  int fd() const { return stream_.get(); }
  // Reads what arrived and handles complete frames. A protocol violation throws
  // Error(ExitCode::agent) naming it after the channel resynchronised: a broken or torn frame is
  // skipped up to the next frame start, a malformed message dropped, and pending requests fail
  // (their answers may have been lost). Only the end of the stream closes the channel.
  // Requests the agent has not answered by their deadline (an exec's own timeout plus a grace,
  // kAnswerWait for the others) fail with an error then, so no caller waits for ever on a guest
  // that froze or lost a message; an answer that comes later is dropped quietly. Called by
  // on_readable, and by whoever polls the channel without data.
  void on_readable();
  void expire_overdue(Clock::time_point now = Clock::now());
  static constexpr std::chrono::seconds kAnswerWait{15};
  bool closed() const { return closed_; }
  std::uint64_t resyncs() const { return resyncs_; }

  const std::optional<agent::Hello>& hello() const { return hello_; }
  // The protocol version the agent spoke in its hello: every request to it goes in that version
  // (the newest this build speaks until a hello came).
  std::uint16_t protocol() const { return protocol_; }
  std::optional<Clock::time_point> last_heard() const { return last_heard_; }
  std::uint64_t heartbeats() const { return heartbeats_; }
  // Changes whenever the guest's module list changes (reported with heartbeats).
  std::uint64_t modules_generation() const { return modules_generation_; }
  // Serial ports the agent found stalled with output queued and re-armed (its heartbeats).
  std::uint64_t serial_rearmed() const { return serial_rearmed_; }

  // Sends an exec request; the callback gets the result, or an error text (agent refused,
  // channel closed). Returns the request id.
  std::uint64_t exec(const std::vector<std::string>& argv, std::uint32_t timeout_ms, ExecCallback done);
  // Starts a command without waiting for it; the callback gets its pid (0 with an error text
  // if it could not be started or the channel failed).
  using SpawnCallback = std::function<void(int pid, const std::string& error)>;
  std::uint64_t spawn(const std::vector<std::string>& argv, SpawnCallback done);
  // Reads a whole guest file in chunks (at most max_size bytes, else an error); the callback
  // gets its content or an error text.
  using FileCallback = std::function<void(std::string data, const std::string& error)>;
  void fetch_file(const std::string& path, std::size_t max_size, FileCallback done);
  void ping();
  void poweroff();
  // Fails every pending request (the guest is gone).
  void abandon(const std::string& why);

 private:
  void send(agent::MessageType type, const std::string& payload);
  void handle(const agent::Frame& frame);
  void lose_sync(const std::string& why);

  UniqueFd stream_;
  agent::FrameDecoder decoder_;
  std::chrono::milliseconds torn_after_;
  std::optional<Clock::time_point> partial_since_;  // an incomplete frame waits since then
  std::uint64_t resyncs_ = 0;
  std::uint64_t protocol_errors_ = 0;                     // since the last one reported
  std::optional<Clock::time_point> last_error_report_;
  bool closed_ = false;
  std::optional<agent::Hello> hello_;
  std::uint16_t protocol_ = agent::kProtocolVersion;
  std::optional<Clock::time_point> last_heard_;
  std::uint64_t heartbeats_ = 0;
  std::uint64_t modules_generation_ = 0;
  std::uint64_t serial_rearmed_ = 0;
  std::uint64_t next_id_ = 1;
  std::map<std::uint64_t, ExecCallback> pending_;
  std::map<std::uint64_t, SpawnCallback> pending_spawns_;
  // A whole-file read in progress, filed under the id of its outstanding chunk request.
  struct FileFetch {
    std::string path, data;
    std::size_t max_size = 0;
    FileCallback done;
  };
  std::map<std::uint64_t, FileFetch> fetches_;
  std::uint64_t request_chunk(const FileFetch& fetch);  // sends; returns the request id
  // When each request still waiting for an answer is due, and the ids given up on (the newest
  // kMaxExpired, so that their late answers are not taken for protocol errors).
  std::map<std::uint64_t, Clock::time_point> due_;
  std::set<std::uint64_t> expired_;
  static constexpr std::size_t kMaxExpired = 256;
  bool answered(std::uint64_t id);  // false for a late answer to an expired request
  void forget(std::uint64_t id);    // its answer, if one still comes, is dropped
};

}  // namespace immortal::vmm
