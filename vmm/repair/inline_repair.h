// --repair inline: the repair agent as a host process, sandboxed (agent/sandbox.h: seccomp, no
// files, no network), with a read-only view of guest RAM, the mailbox, and a socket whose bytes
// say "request waiting" / "answer ready". Started ahead, like the repair VM.
#pragma once

#include "machine.h"
#include "repair/repair_worker.h"
#include "repair/shared_kernel_files.h"

#include <memory>
#include <optional>
#include <vector>

namespace immortal::vmm {

class InlineRepair final : public RepairWorker {
 public:
  // agent: the immortal-repair-agent binary; payload: the repair payload's memfd and where in it
  // the payload lies (repair/repair_image.h); log: its stderr. kernel_files: the host's files of the
  // kernel image's symbols, of its BTF and of its unwind tables (repair/shared_kernel_files.h),
  // read by the agent in place of its own copies.
  InlineRepair(const std::string& agent, int payload, std::uint64_t payload_offset, const Machine::RamFile& ram,
               const std::string& log, HostKernelFiles kernel_files = {});
  ~InlineRepair() override;

  const char* mode() const override { return "inline"; }
  WorkerState state() override;
  std::string status() const override { return status_; }
  double start_ms() const override { return start_ms_; }
  std::string analyse(const std::string& request, Deadline deadline, std::string_view attachment) override;
  int process_id() const override { return pid_; }

 private:
  void fail_with(const std::string& why);
  void kill_agent();

  MailboxMemory mailbox_;
  UniqueFd doorbell_;
  std::vector<std::shared_ptr<const void>> file_keepers_;  // the host's kernel files stay while the agent reads them
  int pid_ = -1;
  WorkerState state_ = WorkerState::starting;
  std::string status_ = "starting";
  Clock::time_point started_ = Clock::now();
  double start_ms_ = 0;
};

}  // namespace immortal::vmm
