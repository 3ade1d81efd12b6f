// Writes a memory snapshot as an ELF64 core in the layout kdump's /proc/vmcore has, which
// `crash` and drgn read: the PT_NOTE first (one NT_PRSTATUS per CPU, then VMCOREINFO), a PT_LOAD
// for the kernel image at its virtual address, then one PT_LOAD per run of RAM at
// page_offset_base + paddr (the direct map). Pages the snapshot left out (zero, free, user,
// page cache) are not in the file: each segment's p_filesz stops before them and its p_memsz
// covers them, which ELF readers (crash, drgn, ours) read as zeros — as makedumpfile's ELF
// output does. docs/bundle-format.md describes it.
#pragma once

#include "dump/memory_snapshot.h"
#include "x86_64/registers.h"

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

namespace immortal {

struct VmcoreCpu {
  int pid = 0;  // the task running on the CPU (0 for idle): drgn matches notes to tasks by it
  X86Registers registers;
};

struct VmcoreLayout {
  std::uint64_t page_offset_base = 0;  // the direct map's start
  std::uint64_t kernel_vaddr = 0;      // _text, and its physical address and size (_end - _text)
  std::uint64_t kernel_paddr = 0;
  std::uint64_t kernel_size = 0;
};

struct VmcoreStats {
  std::uint64_t file_bytes = 0;
  std::uint64_t segments = 0;
  std::uint64_t data_pages = 0;  // pages with their bytes in the file
};

// Writes to fd (positioned at 0, regular file). progress(done, total) is called now and then
// with byte counts. Throws Error on I/O failure.
VmcoreStats write_vmcore(int fd, const MemorySnapshot& memory, const std::vector<VmcoreCpu>& cpus,
                         const std::string& vmcoreinfo, const VmcoreLayout& layout,
                         const std::function<void(std::uint64_t, std::uint64_t)>& progress = {});

}  // namespace immortal
