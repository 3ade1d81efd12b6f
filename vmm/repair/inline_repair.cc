#include "repair/inline_repair.h"

#include "base/clock.h"
#include "base/error.h"
#include "repair/agent_process.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <fmt/format.h>

namespace immortal::vmm {

InlineRepair::InlineRepair(const std::string& agent, int payload, std::uint64_t payload_offset, const Machine::RamFile& ram,
                           const std::string& log, HostKernelFiles kernel_files) {
  // Read-only open file descriptions of guest RAM and the payload: the agent cannot map them writable.
  UniqueFd ram_ro = reopen_read_only(ram.fd);
  if (!ram_ro) fail_os(ExitCode::failure, "reopen guest RAM read-only", errno);
  UniqueFd payload_ro = reopen_read_only(payload);
  if (!payload_ro) fail_os(ExitCode::failure, "reopen the repair payload read-only", errno);
  Doorbell doorbell = make_doorbell();
  doorbell_ = std::move(doorbell.ours);
  UniqueFd log_fd(::open(log.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600));
  std::vector<std::string> args = {agent, "--inline", "--ram-fd", "3", "--mailbox-fd", "4", "--doorbell-fd", "5", "--payload-fd", "6",
                                   "--payload-offset", std::to_string(payload_offset)};
  std::vector<int> fds = {-1, log_fd.get(), log_fd.get(), ram_ro.get(), mailbox_.fd(), doorbell.theirs.get(), payload_ro.get()};
  // Opened read-only; each at the next descriptor.
  for (auto [option, file] : {std::pair{"--symbols-fd", &kernel_files.symbols}, std::pair{"--types-fd", &kernel_files.types},
                              std::pair{"--unwind-fd", &kernel_files.unwind}}) {
    if (!*file) continue;
    args.insert(args.end(), {option, std::to_string(fds.size())});
    fds.push_back((*file)->fd.get());
    file_keepers_.push_back(std::move((*file)->keeper));
  }
  pid_ = start_agent_process(args, fds);
}

InlineRepair::~InlineRepair() { kill_agent(); }

void InlineRepair::kill_agent() {
  if (pid_ > 0) {
    ::kill(pid_, SIGKILL);
    ::waitpid(pid_, nullptr, 0);
    pid_ = -1;
  }
}

void InlineRepair::fail_with(const std::string& why) {
  state_ = WorkerState::failed;
  status_ = why;
  kill_agent();
}

WorkerState InlineRepair::state() {
  if (state_ == WorkerState::failed) return state_;
  int status = 0;
  if (pid_ > 0 && ::waitpid(pid_, &status, WNOHANG) == pid_) {
    pid_ = -1;
    std::string last = mailbox_.box().agent_status();
    std::string ending = agent_ending(status);
    fail_with("the inline repair agent " + (ending.empty() ? std::string("exited") : ending) +
              (WIFSIGNALED(status) || last.empty() ? "" : ": " + last));
    return state_;
  }
  if (state_ == WorkerState::starting && wait_readable(doorbell_.get(), Deadline::in(std::chrono::milliseconds(0)))) {
    char c = 0;
    if (::read(doorbell_.get(), &c, 1) != 1) {
      fail_with("the inline repair agent closed its channel while starting");
    } else if (mailbox_.box().agent_state() == repair::AgentState::ready) {
      state_ = WorkerState::ready;
      status_ = mailbox_.box().agent_status();
      start_ms_ = ms_since(started_);
    } else {
      fail_with("the inline repair agent could not start: " + mailbox_.box().agent_status());
    }
  }
  return state_;
}

std::string InlineRepair::analyse(const std::string& request, Deadline deadline, std::string_view /*attachment*/) {
  while (state() == WorkerState::starting && !deadline.expired())
    wait_readable(doorbell_.get(), Deadline::in(std::chrono::milliseconds(20)));
  if (state_ != WorkerState::ready) fail(ExitCode::failure, "the inline repair agent is not ready: {}", status_);
  std::uint64_t seq = mailbox_.box().post_request(request);
  char c = 'q';
  if (::write(doorbell_.get(), &c, 1) != 1) {
    fail_with("the inline repair agent's channel is closed");
    fail(ExitCode::failure, "{}", status_);
  }
  if (!wait_readable(doorbell_.get(), deadline)) {
    fail_with("the inline repair agent did not answer in time (killed)");
    fail(ExitCode::timeout, "{}", status_);
  }
  if (::read(doorbell_.get(), &c, 1) != 1) {
    // A dying process closes its descriptors before it can be reaped: wait a little for its
    // exit status, which says why (a forbidden system call is SIGSYS).
    for (Deadline reap = Deadline::in(std::chrono::seconds(2)); state() != WorkerState::failed && !reap.expired();)
      ::poll(nullptr, 0, 5);
    if (state_ != WorkerState::failed) fail_with("the inline repair agent closed its channel");
    fail(ExitCode::failure, "{}", status_);
  }
  try {
    auto answer = mailbox_.box().take_response(seq);
    if (!answer) fail(ExitCode::failure, "the inline repair agent rang without answering");
    return *answer;
  } catch (const std::runtime_error& e) {
    fail_with(e.what());
    throw Error(ExitCode::failure, e.what());
  }
}

}  // namespace immortal::vmm
