#include "agent_channel.h"

#include "base/budgets.h"

#include "base/error.h"

namespace immortal::vmm {

using agent::MessageType;

namespace {
// Removes and returns what waits for an answer; an answer to nothing is a protocol error.
template <typename Map>
typename Map::mapped_type take(Map& pending, std::uint64_t id, const char* what) {
  auto it = pending.find(id);
  if (it == pending.end()) throw agent::ProtocolError(std::string(what) + " for unknown request " + std::to_string(id));
  auto value = std::move(it->second);
  pending.erase(it);
  return value;
}
}  // namespace

AgentChannel::AgentChannel(UniqueFd stream, std::chrono::milliseconds torn_after)
    : stream_(std::move(stream)), torn_after_(torn_after) {
  set_nonblocking(stream_.get(), true);
}

void AgentChannel::send(MessageType type, const std::string& payload) {
  if (closed_) fail(ExitCode::agent, "the agent channel is closed");
  write_all(stream_.get(), agent::encode_frame(type, payload, protocol_), Deadline::in(std::chrono::seconds(5)));
}

void AgentChannel::forget(std::uint64_t id) {
  expired_.insert(id);
  if (expired_.size() > kMaxExpired) expired_.erase(expired_.begin());
}

bool AgentChannel::answered(std::uint64_t id) {
  due_.erase(id);
  return expired_.count(id) == 0;
}

void AgentChannel::expire_overdue(Clock::time_point now) {
  std::vector<std::uint64_t> overdue;
  for (const auto& [id, due] : due_)
    if (now >= due) overdue.push_back(id);
  for (std::uint64_t id : overdue) {
    due_.erase(id);
    forget(id);
    const std::string why = "the guest agent did not answer in time";
    if (auto it = pending_.find(id); it != pending_.end()) {
      auto done = std::move(it->second);
      pending_.erase(it);
      done(nullptr, why);
    } else if (auto sit = pending_spawns_.find(id); sit != pending_spawns_.end()) {
      auto done = std::move(sit->second);
      pending_spawns_.erase(sit);
      done(0, why);
    } else if (auto fit = fetches_.find(id); fit != fetches_.end()) {
      auto fetch = std::move(fit->second);
      fetches_.erase(fit);
      fetch.done({}, why + " (reading " + fetch.path + ")");
    }
  }
}

void AgentChannel::on_readable() {
  if (closed_) return;
  expire_overdue();
  bool got_data = false;
  // Level-triggered: what is left beyond this wake's budget is read on the next one.
  for (std::size_t taken = 0; taken < budget::kAgentBytesPerWake;) {
    bool would_block = false;
    std::string data;
    try {
      data = read_some(stream_.get(), 65536, &would_block);
    } catch (const Error&) {
      closed_ = true;
      abandon("agent channel closed");
      return;
    }
    if (would_block) break;
    if (data.empty()) {
      closed_ = true;
      abandon("agent channel closed");
      return;
    }
    taken += data.size();
    decoder_.feed(data);
    got_data = true;
  }
  // Frames are decoded until none is left; a broken header or a frame that never completes (torn
  // by a guest reset or an agent restart) costs the bytes up to the next frame, not the channel.
  std::string problem;
  for (int round = 0; round < 2; ++round) {
    for (;;) {
      std::optional<agent::Frame> frame;
      try {
        frame = decoder_.next();
      } catch (const agent::ProtocolError& e) {
        lose_sync(e.what());
        problem = e.what();
        continue;
      }
      if (!frame) break;
      partial_since_.reset();
      try {
        handle(*frame);
      } catch (const agent::ProtocolError& e) {
        problem = e.what();  // a malformed message: dropped, the stream is still in step
      }
    }
    if (decoder_.buffered() == 0) {
      partial_since_.reset();
      break;
    }
    if (!partial_since_) partial_since_ = Clock::now();
    if (!got_data || Clock::now() - *partial_since_ < torn_after_) break;
    lose_sync("a frame never completed");
    problem = "a frame never completed (torn by a guest reset?)";
  }
  if (problem.empty()) return;
  // Reported at most every 10 s: a guest that writes garbage without pause must not fill the
  // supervisor's log at the rate it writes.
  ++protocol_errors_;
  auto now = Clock::now();
  if (last_error_report_ && now - *last_error_report_ < std::chrono::seconds(10)) return;
  last_error_report_ = now;
  std::uint64_t errors = std::exchange(protocol_errors_, 0);
  fail(ExitCode::agent, "guest agent broke the protocol: {}{}", problem,
       errors > 1 ? fmt::format(" ({} times since the last report)", errors) : "");
}

void AgentChannel::lose_sync(const std::string& why) {
  ++resyncs_;
  partial_since_.reset();
  decoder_.resync();
  // Answers may have been in the bytes dropped: nobody waits for them for ever.
  abandon("the agent channel lost sync (" + why + ")");
}

void AgentChannel::handle(const agent::Frame& frame) {
  last_heard_ = Clock::now();
  switch (frame.type) {
    case MessageType::hello:
      // A new hello on an open channel: the agent restarted (or the guest rebooted); what the
      // old one was asked will not be answered.
      if (hello_) abandon("the guest agent restarted");
      {
        agent::Hello hello = agent::parse_hello(frame.payload);
        if (hello.protocol != frame.version)
          throw agent::ProtocolError("hello says protocol " + std::to_string(hello.protocol) +
                                     " in a frame of version " + std::to_string(frame.version));
        // One switch per version would go here when a second one ships: today every supported
        // version (docs/protocol.md) reads and writes the same messages.
        protocol_ = frame.version;
        hello_ = std::move(hello);
      }
      modules_generation_ = hello_->modules_generation;
      break;
    case MessageType::heartbeat: {
      auto beat = agent::parse_heartbeat(frame.payload);
      modules_generation_ = beat.modules_generation;
      serial_rearmed_ = beat.serial_rearmed;
      ++heartbeats_;
      break;
    }
    case MessageType::file_data: {
      auto chunk = agent::parse_file_data(frame.payload);
      if (!answered(chunk.id)) break;
      FileFetch fetch = take(fetches_, chunk.id, "file data");
      if (!chunk.error.empty()) {
        fetch.done({}, chunk.error);
      } else if (fetch.data.size() + chunk.data.size() > fetch.max_size) {
        fetch.done({}, fetch.path + " is larger than " + std::to_string(fetch.max_size) + " bytes");
      } else {
        fetch.data += chunk.data;
        if (chunk.eof || chunk.data.empty()) {
          // Grown chunk by chunk, the string holds up to twice its bytes (4 MiB spare on the
          // kernel's BTF): the profile keeps these for as long as it is current.
          fetch.data.shrink_to_fit();
          fetch.done(std::move(fetch.data), "");
        } else {
          std::uint64_t id = 0;
          try {
            id = request_chunk(fetch);
          } catch (const Error& e) {
            fetch.done({}, e.what());
            break;
          }
          fetches_.emplace(id, std::move(fetch));
        }
      }
      break;
    }
    case MessageType::exec_result: {
      auto result = agent::parse_exec_result(frame.payload);
      if (!answered(result.id)) break;
      take(pending_, result.id, "result")(&result, "");
      break;
    }
    case MessageType::spawned: {
      auto spawned = agent::parse_spawned(frame.payload);
      if (!answered(spawned.id)) break;
      take(pending_spawns_, spawned.id, "spawn answer")(spawned.pid, spawned.error);
      break;
    }
    case MessageType::error: {
      auto error = agent::parse_error(frame.payload);
      if (!error.id || !answered(*error.id)) break;
      if (auto it = pending_.find(*error.id); it != pending_.end()) {
        auto done = std::move(it->second);
        pending_.erase(it);
        done(nullptr, "agent: " + error.message);
      } else if (auto sit = pending_spawns_.find(*error.id); sit != pending_spawns_.end()) {
        auto done = std::move(sit->second);
        pending_spawns_.erase(sit);
        done(0, "agent: " + error.message);
      }
      break;
    }
    default:
      throw agent::ProtocolError(std::string("unexpected message from guest: ") + agent::name_of(frame.type));
  }
}

std::uint64_t AgentChannel::exec(const std::vector<std::string>& argv, std::uint32_t timeout_ms, ExecCallback done) {
  agent::ExecRequest request;
  request.id = next_id_++;
  try {
    agent::check_argv(argv);  // what the agent would refuse, refused here at once
  } catch (const agent::ProtocolError& e) {
    done(nullptr, e.what());
    return request.id;
  }
  request.argv = argv;
  request.timeout_ms = timeout_ms;
  send(MessageType::exec, agent::to_payload(request));
  pending_.emplace(request.id, std::move(done));
  due_[request.id] = Clock::now() + std::chrono::milliseconds(timeout_ms) + kAnswerWait;
  return request.id;
}

std::uint64_t AgentChannel::spawn(const std::vector<std::string>& argv, SpawnCallback done) {
  agent::SpawnRequest request{next_id_++, argv};
  try {
    agent::check_argv(argv);
  } catch (const agent::ProtocolError& e) {
    done(0, e.what());
    return request.id;
  }
  send(MessageType::spawn, agent::to_payload(request));
  pending_spawns_.emplace(request.id, std::move(done));
  due_[request.id] = Clock::now() + kAnswerWait;
  return request.id;
}

std::uint64_t AgentChannel::request_chunk(const FileFetch& fetch) {
  agent::ReadFileRequest request{next_id_++, fetch.path, fetch.data.size(), static_cast<std::uint32_t>(agent::kMaxChunk)};
  send(MessageType::read_file, agent::to_payload(request));
  due_[request.id] = Clock::now() + kAnswerWait;
  return request.id;
}

void AgentChannel::fetch_file(const std::string& path, std::size_t max_size, FileCallback done) {
  FileFetch fetch{path, {}, max_size, std::move(done)};
  std::uint64_t id = request_chunk(fetch);
  fetches_.emplace(id, std::move(fetch));
}

void AgentChannel::ping() { send(MessageType::ping, agent::to_payload(agent::Ping{next_id_++})); }

void AgentChannel::poweroff() { send(MessageType::poweroff, "{}"); }

void AgentChannel::abandon(const std::string& why) {
  auto pending = std::move(pending_);
  auto spawns = std::move(pending_spawns_);
  auto fetches = std::move(fetches_);
  pending_.clear();
  pending_spawns_.clear();
  fetches_.clear();
  due_.clear();
  // Their answers, should any still come (a channel that lost sync), are not protocol errors.
  for (const auto& entry : fetches) forget(entry.first);
  for (const auto& entry : pending) forget(entry.first);
  for (const auto& entry : spawns) forget(entry.first);
  for (auto& [id, fetch] : fetches) fetch.done({}, why);
  for (auto& [id, done] : pending) done(nullptr, why);
  for (auto& [id, done] : spawns) done(0, why);
}

}  // namespace immortal::vmm
