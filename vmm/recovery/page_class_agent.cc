#include "recovery/page_class_agent.h"

#include "base/error.h"
#include "base/sealed_memfd.h"
#include "repair/agent_process.h"

#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <fcntl.h>

#include <csignal>

namespace immortal::vmm {

PageClassAgent::PageClassAgent(const std::string& agent, const Machine::RamFile& ram, const PhysicalMemory& memory,
                               const Kernel& kernel) {
  if (!kernel.vmcoreinfo()) fail(ExitCode::unsupported, "no VMCOREINFO to say where struct page fields are");
  auto vmemmap = kernel.symbols().address_of("vmemmap_base");
  if (!vmemmap) fail(ExitCode::unsupported, "the kernel has no vmemmap_base symbol");
  shape_ = unclassified_ram(memory);
  now_ = shape_;
  nlohmann::json ranges = nlohmann::json::array();
  for (const auto& [r, c] : shape_) {
    ranges.push_back({{"start", r.start}, {"pages", c.size()}});
    pages_ += c.size();
  }
  std::string vmcoreinfo;
  for (const auto& [k, v] : kernel.vmcoreinfo()->entries()) vmcoreinfo += k + "=" + v + "\n";
  const KernelLayout& l = kernel.memory().layout();
  nlohmann::json request = ram_layout_json(ram);
  request.update(nlohmann::json{
      {"ranges", ranges},
      {"layout", {{"page_table", l.page_table}, {"five_level", l.five_level}, {"phys_base", l.phys_base},
                  {"page_offset_base", l.page_offset_base}, {"kaslr_offset", l.kaslr_offset}}},
      {"vmemmap_base_symbol", *vmemmap},
      {"vmcoreinfo", vmcoreinfo}});
  UniqueFd request_fd = sealed_memfd_with("immortal-classify-request",
                                          request.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace));
  // The classes: the agent writes them, the supervisor maps them read-only; sealed, so that no
  // side can shrink them under the other.
  classes_fd_ = sealed_memfd("immortal-page-classes", pages_);
  if (pages_) {
    void* p = ::mmap(nullptr, pages_, PROT_READ, MAP_SHARED, classes_fd_.get(), 0);
    if (p == MAP_FAILED) fail_os(ExitCode::failure, "map the page classes", errno);
    classes_ = static_cast<const std::uint8_t*>(p);
  }
  UniqueFd ram_ro = reopen_read_only(ram.fd);
  if (!ram_ro) fail_os(ExitCode::failure, "reopen guest RAM read-only", errno);
  Doorbell doorbell = make_doorbell();
  doorbell_ = std::move(doorbell.ours);
  log_fd_ = agent_log_memfd("immortal-classify-log");
  pid_ = start_agent_process({agent, "--classify"}, {request_fd.get(), -1, log_fd_.get(), ram_ro.get(), classes_fd_.get(),
                                                     doorbell.theirs.get()});
}

PageClassAgent::~PageClassAgent() {
  if (pid_ > 0) {
    ::kill(pid_, SIGKILL);
    ::waitpid(pid_, nullptr, 0);
  }
  if (classes_) ::munmap(const_cast<std::uint8_t*>(classes_), pages_);
}

void PageClassAgent::fail_with(const std::string& why) {
  failed_ = true;
  ready_ = false;
  if (pid_ > 0) {
    ::kill(pid_, SIGKILL);
    int status = 0;
    ::waitpid(pid_, &status, 0);
    pid_ = -1;
    why_ = agent_failure(why, status, log_fd_.get());
  } else {
    why_ = why;
  }
}

bool PageClassAgent::ready(Deadline deadline) {
  if (ready_ || failed_) return ready_;
  if (!wait_readable(doorbell_.get(), deadline)) return false;
  char c = 0;
  if (::read(doorbell_.get(), &c, 1) != 1 || c != 'r') {
    fail_with("the page-class agent stopped before it was ready");
    return false;
  }
  ready_ = true;
  return true;
}

RamClasses PageClassAgent::last() const {
  RamClasses out = shape_;
  if (ready_) read_classes(out);
  return out;
}

void PageClassAgent::read_classes(RamClasses& into) const {
  // One byte a page, as the agent wrote it: what it says of a page is taken only when it is a
  // class it may give (free, user, page cache); anything else, zero included (that is found by
  // copying), stays `kernel`: copied.
  const std::uint8_t* at = classes_;
  for (auto& [r, c] : into)
    for (auto& page : c) {
      std::uint8_t b = *at++;
      page = b == static_cast<std::uint8_t>(PageClass::free) || b == static_cast<std::uint8_t>(PageClass::user) ||
                     b == static_cast<std::uint8_t>(PageClass::cache)
                 ? static_cast<PageClass>(b)
                 : PageClass::kernel;
    }
}

const RamClasses* PageClassAgent::classify(Deadline deadline) {
  if (!ready(deadline)) {
    if (!failed_) fail_with("the page-class agent was not ready in time");
    return nullptr;
  }
  char c = 'c';
  if (::write(doorbell_.get(), &c, 1) != 1) {
    fail_with("the page-class agent's channel is closed");
    return nullptr;
  }
  if (!wait_readable(doorbell_.get(), deadline)) {
    fail_with("the page-class agent did not answer in time (killed)");
    return nullptr;
  }
  if (::read(doorbell_.get(), &c, 1) != 1 || c != 'd') {
    fail_with("the page-class agent stopped while classifying");
    return nullptr;
  }
  read_classes(now_);
  return &now_;
}

}  // namespace immortal::vmm
