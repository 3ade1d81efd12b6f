// PhysicalMemory over an ELF64 core file of a guest: QEMU's dump-guest-memory output and
// kdump-style vmcores (ours, /proc/vmcore copies). Parsed with libelf; the file is mapped
// read-only and every offset is checked against its real size, so a truncated or corrupted
// core yields "missing" ranges or a clear error, never a wild read.
//
// Physical addresses come from the PT_LOAD segments' p_paddr. Bytes a segment declares in
// p_memsz but does not carry in the file (p_filesz shorter, or the file truncated) are missing,
// not zero: a read that touches them throws MemoryFault.
#pragma once

#include "memory/physical_memory.h"
#include "x86_64/registers.h"

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace immortal {

struct ElfNote {
  std::string name;  // "CORE", "VMCOREINFO", "QEMU", ...
  std::uint32_t type = 0;
  std::string desc;
};

// One vCPU's state as the core records it.
struct CoreCpu {
  int pid = 0;  // NT_PRSTATUS pr_pid (kdump: the task's pid; QEMU: the vCPU index + 1)
  X86Registers registers;
  bool has_control_registers = false;  // cr3 etc. known (from QEMU's own "QEMU" note)
};

class ElfCoreMemory final : public PhysicalMemory {
 public:
  // Throws Error(ExitCode::bad_input) for a file that is not an ELF64 x86-64 core.
  static std::unique_ptr<ElfCoreMemory> open(const std::string& path);
  ~ElfCoreMemory() override;
  ElfCoreMemory(const ElfCoreMemory&) = delete;
  ElfCoreMemory& operator=(const ElfCoreMemory&) = delete;

  const std::vector<PhysicalRange>& ranges() const override { return ranges_; }
  void read(std::uint64_t address, std::span<std::byte> out) const override;
  bool writable() const override { return false; }
  void write(std::uint64_t address, std::span<const std::byte> data) override;

  const std::vector<ElfNote>& notes() const { return notes_; }
  const std::vector<CoreCpu>& cpus() const { return cpus_; }
  // The VMCOREINFO note's text, if the core has one.
  std::optional<std::string> vmcoreinfo() const;
  // Ranges a segment places in the file but the file does not hold (truncation).
  const std::vector<PhysicalRange>& missing() const { return missing_; }
  std::uint64_t file_size() const { return file_size_; }

 private:
  ElfCoreMemory() = default;
  struct Segment {
    std::uint64_t paddr, file_offset, present;  // present: bytes actually in the file
    std::uint64_t filesz;                       // p_filesz (≤ p_memsz): after it, zeros
    std::uint64_t size;                         // p_memsz
  };
  void parse_notes(const std::byte* data, std::uint64_t size);

  const std::byte* map_ = nullptr;
  std::uint64_t file_size_ = 0;
  std::vector<Segment> segments_;  // sorted by paddr
  std::vector<PhysicalRange> ranges_, missing_;
  std::vector<ElfNote> notes_;
  std::vector<CoreCpu> cpus_;
};

}  // namespace immortal
