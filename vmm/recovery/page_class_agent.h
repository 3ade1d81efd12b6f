// The supervisor's side of the page-class agent (immortal-repair-agent --classify): a sandboxed
// process, started for each profile, that reads the kernel's struct page array and says which
// pages a bundle's snapshot needs. The supervisor hands it guest RAM (read-only), the kernel's
// layout and VMCOREINFO as the healthy guest's profile has them, and takes back one byte a page,
// each checked: anything it does not know is copied (a larger dump, never a wrong one).
#pragma once

#include "base/io.h"
#include "base/unique_fd.h"
#include "dump/memory_snapshot.h"
#include "kernel/kernel.h"
#include "machine.h"

#include <sys/types.h>

#include <optional>
#include <string>

namespace immortal::vmm {

class PageClassAgent {
 public:
  // Starts agent (the immortal-repair-agent binary) for guest RAM `ram` (the file, and the
  // memory it backs) and kernel. Throws Error when it cannot (no VMCOREINFO, no vmemmap_base).
  PageClassAgent(const std::string& agent, const Machine::RamFile& ram, const PhysicalMemory& memory, const Kernel& kernel);
  ~PageClassAgent();
  PageClassAgent(const PageClassAgent&) = delete;
  PageClassAgent& operator=(const PageClassAgent&) = delete;

  // Has it classified guest RAM once (it does at start)? Waits at most until deadline; false
  // while it starts, and for good once it failed (why()).
  bool ready(Deadline deadline);
  // The classes it found last (at start, or at the last classify()), checked.
  RamClasses last() const;
  // The classes of guest RAM now (the guest stopped), within deadline; nullptr when it is not
  // ready, died or was late (then it is killed), with why(). They are kept in memory prepared
  // when the agent started (no fresh page in a pause) and stay valid until the next classify().
  const RamClasses* classify(Deadline deadline);
  bool failed() const { return failed_; }
  const std::string& why() const { return why_; }

 private:
  void fail_with(const std::string& why);
  pid_t pid_ = -1;
  UniqueFd doorbell_, classes_fd_, log_fd_;
  const std::uint8_t* classes_ = nullptr;
  std::uint64_t pages_ = 0;
  RamClasses shape_;  // guest RAM's ranges, in the order the agent writes them
  RamClasses now_;    // classify()'s answer, allocated (and written) once
  void read_classes(RamClasses& into) const;
  bool ready_ = false, failed_ = false;
  std::string why_;
};

}  // namespace immortal::vmm
