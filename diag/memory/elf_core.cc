#include "memory/elf_core.h"

#include "base/error.h"
#include "base/unique_fd.h"

#include <fcntl.h>
#include <gelf.h>
#include <libelf.h>
#include <sys/mman.h>
#include <sys/stat.h>

#include <algorithm>
#include <cstring>

namespace immortal {

namespace {

constexpr std::uint32_t kNtPrstatus = 1;
constexpr std::size_t kPrstatusSize = 336;     // struct elf_prstatus on x86-64
constexpr std::size_t kPrstatusPidOffset = 32;
constexpr std::size_t kPrstatusRegsOffset = 112;
constexpr std::size_t kQemuCpuStateCrOffset = 392;  // QEMUCPUState.cr[5] (target/i386/arch_dump.c)
constexpr std::size_t kMaxNotes = 4096;

std::uint64_t load_u64(const std::string& s, std::size_t at) {
  std::uint64_t v = 0;
  std::memcpy(&v, s.data() + at, 8);
  return v;
}

// pr_reg is struct user_regs_struct: r15 r14 r13 r12 rbp rbx r11 r10 r9 r8 rax rcx rdx rsi rdi
// orig_rax rip cs eflags rsp ss fs_base gs_base ds es fs gs.
X86Registers prstatus_registers(const std::string& desc) {
  X86Registers r;
  std::uint64_t* order[] = {&r.r15, &r.r14, &r.r13, &r.r12, &r.rbp, &r.rbx, &r.r11, &r.r10, &r.r9,
                            &r.r8,  &r.rax, &r.rcx, &r.rdx, &r.rsi, &r.rdi, nullptr, &r.rip, &r.cs,
                            &r.rflags, &r.rsp, &r.ss, &r.fs_base, &r.gs_base, &r.ds, &r.es, &r.fs, &r.gs};
  for (std::size_t i = 0; i < std::size(order); ++i)
    if (order[i]) *order[i] = load_u64(desc, kPrstatusRegsOffset + 8 * i);
  return r;
}

struct ElfHandle {
  Elf* elf = nullptr;
  ~ElfHandle() {
    if (elf) elf_end(elf);
  }
};

}  // namespace

std::unique_ptr<ElfCoreMemory> ElfCoreMemory::open(const std::string& path) {
  UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd) fail(ExitCode::bad_input, "cannot open {}: {}", path, std::strerror(errno));
  struct stat st {};
  if (::fstat(fd.get(), &st) != 0 || !S_ISREG(st.st_mode)) fail(ExitCode::bad_input, "{} is not a regular file", path);
  if (st.st_size < static_cast<off_t>(sizeof(Elf64_Ehdr))) fail(ExitCode::bad_input, "{} is not an ELF core: too short", path);

  std::unique_ptr<ElfCoreMemory> core(new ElfCoreMemory);
  core->file_size_ = static_cast<std::uint64_t>(st.st_size);
  void* map = ::mmap(nullptr, core->file_size_, PROT_READ, MAP_PRIVATE, fd.get(), 0);
  if (map == MAP_FAILED) fail_os(ExitCode::bad_input, "mmap " + path, errno);
  core->map_ = static_cast<const std::byte*>(map);

  if (elf_version(EV_CURRENT) == EV_NONE) fail(ExitCode::failure, "libelf is unusable");
  ElfHandle h;
  h.elf = elf_memory(const_cast<char*>(reinterpret_cast<const char*>(core->map_)), core->file_size_);
  if (!h.elf || elf_kind(h.elf) != ELF_K_ELF) fail(ExitCode::bad_input, "{} is not an ELF file", path);
  GElf_Ehdr ehdr;
  if (!gelf_getehdr(h.elf, &ehdr)) fail(ExitCode::bad_input, "{}: bad ELF header: {}", path, elf_errmsg(-1));
  if (ehdr.e_ident[EI_CLASS] != ELFCLASS64 || ehdr.e_ident[EI_DATA] != ELFDATA2LSB)
    fail(ExitCode::bad_input, "{}: not a 64-bit little-endian ELF file", path);
  if (ehdr.e_type != ET_CORE) fail(ExitCode::bad_input, "{}: an ELF file but not a core dump (type {})", path, ehdr.e_type);
  if (ehdr.e_machine != EM_X86_64) fail(ExitCode::bad_input, "{}: a core of another architecture (machine {}), not x86-64", path, ehdr.e_machine);

  std::size_t count = 0;
  if (elf_getphdrnum(h.elf, &count) != 0) fail(ExitCode::bad_input, "{}: bad program headers: {}", path, elf_errmsg(-1));
  if (count > 1'000'000) fail(ExitCode::bad_input, "{}: absurd number of program headers ({})", path, count);
  for (std::size_t i = 0; i < count; ++i) {
    GElf_Phdr ph;
    if (!gelf_getphdr(h.elf, static_cast<int>(i), &ph)) fail(ExitCode::bad_input, "{}: unreadable program header {}", path, i);
    if (ph.p_type == PT_NOTE) {
      if (ph.p_offset >= core->file_size_) continue;  // truncated away
      std::uint64_t size = std::min<std::uint64_t>(ph.p_filesz, core->file_size_ - ph.p_offset);
      core->parse_notes(core->map_ + ph.p_offset, size);
    } else if (ph.p_type == PT_LOAD && ph.p_memsz > 0) {
      if (ph.p_paddr + ph.p_memsz < ph.p_paddr) fail(ExitCode::bad_input, "{}: segment {} wraps around", path, i);
      std::uint64_t filesz = std::min(ph.p_filesz, ph.p_memsz), present = 0;
      if (ph.p_offset < core->file_size_) present = std::min(filesz, core->file_size_ - ph.p_offset);
      core->segments_.push_back({ph.p_paddr, ph.p_offset, present, filesz, ph.p_memsz});
    }
  }
  std::sort(core->segments_.begin(), core->segments_.end(),
            [](const Segment& a, const Segment& b) { return a.paddr < b.paddr; });
  // Ranges: the union of what the segments hold (kdump layouts map the kernel text twice).
  // Bytes past p_filesz up to p_memsz are zeros (ELF's rule: left-out pages of a filtered dump);
  // bytes the header places in the file but the file lacks are missing.
  std::vector<PhysicalRange> readable;
  for (const auto& s : core->segments_) {
    if (s.present > 0) readable.push_back({s.paddr, s.present});
    if (s.filesz < s.size) readable.push_back({s.paddr + s.filesz, s.size - s.filesz});
    if (s.present < s.filesz) core->missing_.push_back({s.paddr + s.present, s.filesz - s.present});
  }
  std::sort(readable.begin(), readable.end(), [](const PhysicalRange& a, const PhysicalRange& b) { return a.start < b.start; });
  for (const auto& r : readable) {
    if (!core->ranges_.empty() && r.start <= core->ranges_.back().end()) {
      auto& last = core->ranges_.back();
      last.size = std::max(last.end(), r.end()) - last.start;
    } else {
      core->ranges_.push_back(r);
    }
  }
  if (core->segments_.empty()) fail(ExitCode::bad_input, "{}: a core without memory (no PT_LOAD segment)", path);
  return core;
}

ElfCoreMemory::~ElfCoreMemory() {
  if (map_) ::munmap(const_cast<std::byte*>(map_), file_size_);
}

void ElfCoreMemory::parse_notes(const std::byte* data, std::uint64_t size) {
  std::size_t qemu_notes = 0;
  std::uint64_t at = 0;
  while (at + 12 <= size && notes_.size() < kMaxNotes) {
    std::uint32_t namesz, descsz, type;
    std::memcpy(&namesz, data + at, 4);
    std::memcpy(&descsz, data + at + 4, 4);
    std::memcpy(&type, data + at + 8, 4);
    std::uint64_t name_at = at + 12;
    std::uint64_t desc_at = name_at + ((static_cast<std::uint64_t>(namesz) + 3) & ~3ull);
    std::uint64_t next = desc_at + ((static_cast<std::uint64_t>(descsz) + 3) & ~3ull);
    if (desc_at > size || next > size) break;  // a truncated note: stop, keep what was read
    ElfNote note;
    note.name.assign(reinterpret_cast<const char*>(data + name_at), namesz);
    while (!note.name.empty() && note.name.back() == '\0') note.name.pop_back();
    note.type = type;
    note.desc.assign(reinterpret_cast<const char*>(data + desc_at), descsz);
    if (note.name == "CORE" && type == kNtPrstatus && descsz >= kPrstatusSize) {
      CoreCpu cpu;
      std::int32_t pid;
      std::memcpy(&pid, note.desc.data() + kPrstatusPidOffset, 4);
      cpu.pid = pid;
      cpu.registers = prstatus_registers(note.desc);
      cpus_.push_back(cpu);
    } else if (note.name == "QEMU" && descsz >= kQemuCpuStateCrOffset + 40) {
      // QEMU writes one of these per vCPU, after all the NT_PRSTATUS notes, in the same order.
      if (qemu_notes < cpus_.size()) {
        auto& r = cpus_[qemu_notes].registers;
        r.cr0 = load_u64(note.desc, kQemuCpuStateCrOffset);
        r.cr2 = load_u64(note.desc, kQemuCpuStateCrOffset + 16);
        r.cr3 = load_u64(note.desc, kQemuCpuStateCrOffset + 24);
        r.cr4 = load_u64(note.desc, kQemuCpuStateCrOffset + 32);
        cpus_[qemu_notes].has_control_registers = true;
      }
      ++qemu_notes;
    }
    notes_.push_back(std::move(note));
    at = next;
  }
}

std::optional<std::string> ElfCoreMemory::vmcoreinfo() const {
  for (const auto& n : notes_)
    if (n.name == "VMCOREINFO") return n.desc;
  return std::nullopt;
}

void ElfCoreMemory::read(std::uint64_t address, std::span<std::byte> out) const {
  std::uint64_t done = 0;
  while (done < out.size()) {
    std::uint64_t addr = address + done;
    std::uint64_t want = out.size() - done;
    // The last segment starting at or below addr that holds it (segments may overlap).
    const Segment* hit = nullptr;
    for (const auto& s : segments_) {
      if (s.paddr > addr) break;
      std::uint64_t off = addr - s.paddr;
      if (off < s.present || (off >= s.filesz && off < s.size)) hit = &s;
    }
    if (!hit) {
      bool declared = std::any_of(segments_.begin(), segments_.end(),
                                  [&](const Segment& s) { return addr >= s.paddr && addr - s.paddr < s.size; });
      throw MemoryFault(addr, want, declared ? "not in the dump (the file is truncated)" : "not in the dump");
    }
    std::uint64_t off = addr - hit->paddr;
    std::uint64_t n;
    if (off < hit->present) {
      n = std::min(want, hit->present - off);
      std::memcpy(out.data() + done, map_ + hit->file_offset + off, n);
    } else {
      n = std::min(want, hit->size - off);
      std::memset(out.data() + done, 0, n);
    }
    done += n;
  }
}

void ElfCoreMemory::write(std::uint64_t address, std::span<const std::byte> data) {
  throw MemoryFault(address, data.size(), "a dump is read-only");
}

}  // namespace immortal
