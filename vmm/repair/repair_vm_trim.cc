#include "repair/repair_vm_trim.h"

#include "base/error.h"
#include "kernel/kernel.h"
#include "kernel/vmcoreinfo.h"
#include "profile/profile_from_memory.h"
#include "recovery/page_class_agent.h"

#include <fcntl.h>
#include <sys/stat.h>

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

std::uint64_t punch_free_pages(const Machine::RamFile& ram, const RamClasses& classes) {
  constexpr std::uint64_t kPage = MemorySnapshot::kPageSize;
  std::uint64_t before = allocated_bytes(ram.fd);
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
