#include "repair/repair_worker.h"

#include "base/error.h"
#include "base/sealed_memfd.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>

namespace immortal::vmm {

const char* to_string(WorkerState state) {
  switch (state) {
    case WorkerState::starting: return "starting";
    case WorkerState::ready: return "ready";
    case WorkerState::failed: return "failed";
  }
  return "?";
}

MailboxMemory::MailboxMemory(std::uint64_t bytes)
    : MailboxMemory(sealed_memfd("immortal-repair-mailbox", std::max(bytes, repair::kMailboxSize)), bytes, 0) {}

MailboxMemory::MailboxMemory(UniqueFd file, std::uint64_t bytes, std::uint64_t session)
    : bytes_(std::max(bytes, repair::kMailboxSize)), fd_(std::move(file)) {
  base_ = ::mmap(nullptr, bytes_, PROT_READ | PROT_WRITE, MAP_SHARED, fd_.get(), 0);
  if (base_ == MAP_FAILED) fail_os(ExitCode::failure, "map the repair mailbox", errno);
  box_ = repair::Mailbox(base_, bytes_);
  box_.initialise(session);
}

void MailboxMemory::clear_attachment() {
  if (bytes_ > repair::kMailboxSize)
    (void)::fallocate(fd_.get(), FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, static_cast<off_t>(repair::kMailboxSize),
                      static_cast<off_t>(bytes_ - repair::kMailboxSize));
}

MailboxMemory::~MailboxMemory() {
  if (base_ && base_ != MAP_FAILED) ::munmap(base_, bytes_);
}

}  // namespace immortal::vmm
