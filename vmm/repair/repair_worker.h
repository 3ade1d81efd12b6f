// Where the repair engine runs for the supervisor: a worker holds a repair agent ready (the
// repair VM, or the sandboxed inline process), hands it one crash at a time through the mailbox
// and returns its answer — or fails, bounded by a deadline, whatever the crashed guest's memory
// makes the agent do. The supervisor never parses the crashed kernel itself.
#pragma once

#include "base/io.h"
#include "base/unique_fd.h"
#include "protocol/mailbox.h"

#include <nlohmann/json.hpp>

#include <memory>
#include <string>

namespace immortal::vmm {

enum class WorkerState { starting, ready, failed };
const char* to_string(WorkerState state);

class RepairWorker {
 public:
  virtual ~RepairWorker() = default;
  virtual const char* mode() const = 0;        // "vm", "inline"
  // Cheap; called every supervisor tick: notices the agent becoming ready, failing or dying.
  virtual WorkerState state() = 0;
  virtual std::string status() const = 0;      // the agent's last word, or why it failed
  virtual double start_ms() const = 0;         // from start to ready (0 until then)
  // One request, one answer (JSON text). Throws Error(ExitCode::timeout) when the agent does not
  // answer by the deadline, Error(ExitCode::failure) when it is not ready or died; the worker is
  // then failed for good (a new one is started). attachment: the request's binary part (the
  // crash snapshot's page index the request names), for a worker that reads snapshots.
  virtual std::string analyse(const std::string& request, Deadline deadline, std::string_view attachment) = 0;
  // Whether the worker reads a crash's snapshot in the host pool's arenas (the request's
  // "snapshot") rather than the guest's RAM.
  virtual bool reads_snapshots() const { return false; }
  virtual int process_id() const = 0;
  // A ready worker takes a new payload, written at [offset, offset + size) of the memfd it was
  // started with, without starting again; it is "starting" until it has loaded it. False when
  // it cannot (then it is started anew).
  virtual bool reload(std::uint64_t /*offset*/, std::uint64_t /*size*/) { return false; }
  // Anything more the worker has to say in `status` (the repair VM: the memory it gave back).
  virtual void describe(nlohmann::json& /*into*/) const {}
};

// Shared memory (a memfd) holding the mailbox, mapped here: kMailboxSize bytes, or more for an
// attachment area (the repair VM's: a crash snapshot's page index).
class MailboxMemory {
 public:
  explicit MailboxMemory(std::uint64_t bytes = repair::kMailboxSize);
  // Over a file of `bytes` (a slot of the shared repair VM), initialised for a session.
  MailboxMemory(UniqueFd file, std::uint64_t bytes, std::uint64_t session);
  ~MailboxMemory();
  MailboxMemory(const MailboxMemory&) = delete;
  MailboxMemory& operator=(const MailboxMemory&) = delete;
  int fd() const { return fd_.get(); }
  std::uint64_t bytes() const { return bytes_; }
  // Gives back the memory of the attachment area (a crash snapshot's page index: 4 bytes a page
  // of guest RAM), once its request is answered.
  void clear_attachment();
  repair::Mailbox& box() { return box_; }

 private:
  std::uint64_t bytes_;
  UniqueFd fd_;
  void* base_ = nullptr;
  repair::Mailbox box_{nullptr};
};

}  // namespace immortal::vmm
