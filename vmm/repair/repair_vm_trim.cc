#include "repair/repair_vm_trim.h"

#include "base/error.h"
#include "kernel/kernel.h"
#include "kernel/vmcoreinfo.h"
#include "profile/profile_from_memory.h"
#include "recovery/page_class_agent.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>

namespace immortal::vmm {

namespace {

std::uint64_t allocated_bytes(int fd) {
  struct stat st {};
  return ::fstat(fd, &st) == 0 ? static_cast<std::uint64_t>(st.st_blocks) * 512 : 0;
}

}  // namespace

RamClasses repair_vm_free_pages(const std::string& agent, Machine& vm, std::uint64_t vmcoreinfo_paddr,
                                std::uint32_t vmcoreinfo_size, Deadline deadline) {
  auto ram = vm.ram_file();
  if (!ram) fail(ExitCode::unsupported, "the repair VM's RAM is not in a file");
  if (!vmcoreinfo_paddr || !vmcoreinfo_size || vmcoreinfo_size > Vmcoreinfo::kMaxSize)
    fail(ExitCode::bad_input, "the repair agent did not say where its kernel's VMCOREINFO is");
  const PhysicalMemory& memory = vm.memory();
  auto text = read_vmcoreinfo_note(memory, vmcoreinfo_paddr, vmcoreinfo_size);
  if (!text) fail(ExitCode::bad_input, "no VMCOREINFO note at {:#x} in the repair VM", vmcoreinfo_paddr);
  // The repair VM runs the guest's kernel under its own KASLR offsets: its symbols and types
  // come from its own memory, not from the guest's profile.
  GuestProfile profile = profile_from_memory(memory, Vmcoreinfo::parse(*text));
  auto kernel = Kernel::open(memory, profile, text);
  PageClassAgent classes(agent, *ram, memory, *kernel);
  if (!classes.ready(deadline)) fail(ExitCode::timeout, "the page-class agent did not read the repair VM: {}",
                                     classes.failed() ? classes.why() : std::string("too slow"));
  return classes.last();
}

std::vector<std::pair<std::uint64_t, std::uint64_t>> zero_page_runs(const Machine::RamFile& ram) {
  constexpr std::uint64_t kPage = MemorySnapshot::kPageSize, kChunk = 64 * kPage;
  std::vector<std::pair<std::uint64_t, std::uint64_t>> runs;
  std::vector<std::byte> buf(kChunk);
  auto scan = [&](std::uint64_t from, std::uint64_t to) {  // file offsets, whole pages
    for (std::uint64_t at = from; at < to; at += kChunk) {
      std::uint64_t n = std::min(kChunk, to - at);
      if (::pread(ram.fd, buf.data(), n, static_cast<off_t>(at)) != static_cast<ssize_t>(n)) return;
      for (std::uint64_t p = 0; p < n; p += kPage) {
        if (!page_is_zero(buf.data() + p)) continue;
        if (!runs.empty() && runs.back().first + runs.back().second == at + p) runs.back().second += kPage;
        else runs.emplace_back(at + p, kPage);
      }
    }
  };
  for (const auto& seg : ram.segments) {
    // Only where the file has pages (SEEK_DATA/SEEK_HOLE): a hole is given back already.
    std::uint64_t pos = seg.file_offset, end = seg.file_offset + (seg.size & ~(kPage - 1));
    while (pos < end) {
      off_t data = ::lseek(ram.fd, static_cast<off_t>(pos), SEEK_DATA);
      if (data < 0 || static_cast<std::uint64_t>(data) >= end) break;
      off_t hole = ::lseek(ram.fd, data, SEEK_HOLE);
      std::uint64_t stop = hole < 0 ? end : std::min<std::uint64_t>(static_cast<std::uint64_t>(hole), end);
      std::uint64_t from = static_cast<std::uint64_t>(data) & ~(kPage - 1);
      std::uint64_t to = std::min(end, (stop + kPage - 1) & ~(kPage - 1));
      scan(from, to);
      pos = stop > from ? stop : from + kPage;
    }
  }
  return runs;
}

std::uint64_t punch_free_pages(const Machine::RamFile& ram, const RamClasses& classes,
                               const std::vector<std::pair<std::uint64_t, std::uint64_t>>& zero_runs) {
  constexpr std::uint64_t kPage = MemorySnapshot::kPageSize;
  std::uint64_t before = allocated_bytes(ram.fd);
  for (const auto& [offset, bytes] : zero_runs)
    ::fallocate(ram.fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, static_cast<off_t>(offset), static_cast<off_t>(bytes));
  for (const auto& [range, pages] : classes) {
    // Where this range lies in the file: only pages inside one RAM segment are punched.
    const RamSegment* seg = nullptr;
    for (const auto& s : ram.segments)
      if (range.start >= s.guest_physical && range.start + range.size <= s.guest_physical + s.size) seg = &s;
    if (!seg) continue;
    std::uint64_t file_base = seg->file_offset + (range.start - seg->guest_physical);
    for (std::size_t i = 0; i < pages.size();) {
      if (pages[i] != PageClass::free) {
        ++i;
        continue;
      }
      std::size_t end = i;
      while (end < pages.size() && pages[end] == PageClass::free) ++end;
      ::fallocate(ram.fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, static_cast<off_t>(file_base + i * kPage),
                  static_cast<off_t>((end - i) * kPage));
      i = end;
    }
  }
  std::uint64_t after = allocated_bytes(ram.fd);
  return before > after ? before - after : 0;
}

}  // namespace immortal::vmm
