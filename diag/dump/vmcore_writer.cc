#include "dump/vmcore_writer.h"

#include "base/error.h"

#include <elf.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>

namespace immortal {

namespace {

constexpr std::uint64_t kPage = MemorySnapshot::kPageSize;
constexpr std::size_t kMaxSegments = 60000;  // below PN_XNUM (65535), which needs extended numbering

struct Segment {
  std::uint64_t paddr, filesz, memsz;
  std::uint64_t offset = 0;
};

void put_note(std::string& out, const char* name, std::uint32_t type, const std::string& desc) {
  auto u32 = [&](std::uint32_t v) { out.append(reinterpret_cast<const char*>(&v), 4); };
  std::uint32_t namesz = static_cast<std::uint32_t>(std::strlen(name) + 1);
  u32(namesz);
  u32(static_cast<std::uint32_t>(desc.size()));
  u32(type);
  out.append(name, namesz);
  out.append((4 - namesz % 4) % 4, '\0');
  out += desc;
  out.append((4 - desc.size() % 4) % 4, '\0');
}

// struct elf_prstatus (x86-64): 336 bytes, pr_pid at 32, pr_reg (user_regs_struct) at 112.
std::string prstatus(const VmcoreCpu& cpu) {
  std::string d(336, '\0');
  std::int32_t pid = cpu.pid;
  std::memcpy(d.data() + 32, &pid, 4);
  const X86Registers& r = cpu.registers;
  const std::uint64_t regs[] = {r.r15, r.r14, r.r13, r.r12, r.rbp, r.rbx, r.r11, r.r10, r.r9,
                                r.r8,  r.rax, r.rcx, r.rdx, r.rsi, r.rdi, ~0ull /* orig_rax: not in a syscall */, r.rip, r.cs,
                                r.rflags, r.rsp, r.ss, r.fs_base, r.gs_base, r.ds, r.es, r.fs, r.gs};
  std::memcpy(d.data() + 112, regs, sizeof regs);
  return d;
}

// Runs of RAM whose pages are in the file, each followed by the run of left-out pages it
// covers with p_memsz only. Gaps shorter than min_gap pages are written as zeros instead.
std::vector<Segment> plan_segments(const MemorySnapshot& m, const VmcoreLayout& layout, std::uint64_t min_gap) {
  std::vector<Segment> out;
  auto forced = [&](std::uint64_t pa) { return pa >= layout.kernel_paddr && pa - layout.kernel_paddr < layout.kernel_size; };
  for (const auto& r : m.ranges()) {
    std::uint64_t pa = r.start;
    Segment cur{pa, 0, 0};
    while (pa < r.end()) {
      // A data run, then an excluded run.
      std::uint64_t data_end = pa;
      for (;;) {
        while (data_end < r.end() && (m.page_data(data_end) || forced(data_end))) data_end += kPage;
        std::uint64_t gap_end = data_end;
        while (gap_end < r.end() && !m.page_data(gap_end) && !forced(gap_end)) gap_end += kPage;
        // A short gap between data is cheaper written as zeros than as a new segment.
        if (gap_end < r.end() && gap_end > data_end && (gap_end - data_end) / kPage < min_gap && data_end > cur.paddr) {
          data_end = gap_end;
          continue;
        }
        cur.filesz = data_end - cur.paddr;
        cur.memsz = gap_end - cur.paddr;
        pa = gap_end;
        break;
      }
      out.push_back(cur);
      cur = Segment{pa, 0, 0};
    }
  }
  return out;
}

class Writer {
 public:
  Writer(int fd, const std::function<void(std::uint64_t, std::uint64_t)>& progress, std::uint64_t total)
      : fd_(fd), progress_(progress), total_(total) {
    buffer_.reserve(kBuffer);
  }
  void append(const void* data, std::size_t n) {
    const auto* p = static_cast<const char*>(data);
    while (n) {
      std::size_t k = std::min(n, kBuffer - buffer_.size());
      buffer_.append(p, k);
      p += k;
      n -= k;
      if (buffer_.size() == kBuffer) flush();
    }
  }
  void zeros(std::uint64_t n) {
    static const char z[kPage] = {};
    while (n) {
      std::uint64_t k = std::min<std::uint64_t>(n, kPage);
      append(z, k);
      n -= k;
    }
  }
  void flush() {
    std::size_t done = 0;
    while (done < buffer_.size()) {
      ssize_t w = ::write(fd_, buffer_.data() + done, buffer_.size() - done);
      if (w < 0) {
        if (errno == EINTR) continue;
        fail_os(ExitCode::failure, "writing the vmcore", errno);
      }
      done += static_cast<std::size_t>(w);
    }
    written_ += buffer_.size();
    buffer_.clear();
    if (progress_) progress_(written_, total_);
  }
  std::uint64_t written() const { return written_ + buffer_.size(); }

 private:
  static constexpr std::size_t kBuffer = 4 << 20;
  int fd_;
  const std::function<void(std::uint64_t, std::uint64_t)>& progress_;
  std::uint64_t total_;
  std::string buffer_;
  std::uint64_t written_ = 0;
};

}  // namespace

VmcoreStats write_vmcore(int fd, const MemorySnapshot& memory, const std::vector<VmcoreCpu>& cpus,
                         const std::string& vmcoreinfo, const VmcoreLayout& layout,
                         const std::function<void(std::uint64_t, std::uint64_t)>& progress) {
  std::vector<Segment> segments;
  for (std::uint64_t min_gap = 1;; min_gap *= 4) {
    segments = plan_segments(memory, layout, min_gap);
    if (segments.size() + 2 <= kMaxSegments) break;
  }

  std::string notes;
  for (const auto& cpu : cpus) put_note(notes, "CORE", NT_PRSTATUS, prstatus(cpu));
  if (!vmcoreinfo.empty()) put_note(notes, "VMCOREINFO", 0, vmcoreinfo);

  bool kernel_segment = layout.kernel_size > 0;
  std::size_t phnum = 1 + (kernel_segment ? 1 : 0) + segments.size();
  std::uint64_t notes_at = sizeof(Elf64_Ehdr) + phnum * sizeof(Elf64_Phdr);
  std::uint64_t data_at = (notes_at + notes.size() + kPage - 1) & ~(kPage - 1);
  std::uint64_t at = data_at;
  for (auto& s : segments) {
    s.offset = at;
    at += s.filesz;
  }
  std::uint64_t total = at;

  std::vector<Elf64_Phdr> ph;
  ph.push_back(Elf64_Phdr{PT_NOTE, 0, notes_at, 0, 0, notes.size(), notes.size(), 0});
  if (kernel_segment) {
    // The kernel image's bytes are those of the RAM segment that holds them (same file offsets).
    const Segment* home = nullptr;
    for (const auto& s : segments)
      if (layout.kernel_paddr >= s.paddr && layout.kernel_paddr + layout.kernel_size <= s.paddr + s.filesz) home = &s;
    if (home) {
      std::uint64_t off = home->offset + (layout.kernel_paddr - home->paddr);
      ph.push_back(Elf64_Phdr{PT_LOAD, PF_R | PF_W | PF_X, off, layout.kernel_vaddr, layout.kernel_paddr,
                              layout.kernel_size, layout.kernel_size, 0});
    }
  }
  for (const auto& s : segments)
    ph.push_back(Elf64_Phdr{PT_LOAD, PF_R | PF_W | PF_X, s.filesz ? s.offset : data_at,
                            layout.page_offset_base + s.paddr, s.paddr, s.filesz, s.memsz, 0});

  Elf64_Ehdr eh{};
  std::memcpy(eh.e_ident, ELFMAG, SELFMAG);
  eh.e_ident[EI_CLASS] = ELFCLASS64;
  eh.e_ident[EI_DATA] = ELFDATA2LSB;
  eh.e_ident[EI_VERSION] = EV_CURRENT;
  eh.e_ident[EI_OSABI] = ELFOSABI_NONE;
  eh.e_type = ET_CORE;
  eh.e_machine = EM_X86_64;
  eh.e_version = EV_CURRENT;
  eh.e_phoff = sizeof(Elf64_Ehdr);
  eh.e_ehsize = sizeof(Elf64_Ehdr);
  eh.e_phentsize = sizeof(Elf64_Phdr);
  eh.e_phnum = static_cast<std::uint16_t>(ph.size());

  Writer w(fd, progress, total);
  w.append(&eh, sizeof eh);
  w.append(ph.data(), ph.size() * sizeof(Elf64_Phdr));
  w.append(notes.data(), notes.size());
  w.zeros(data_at - w.written());
  VmcoreStats stats;
  for (const auto& s : segments) {
    for (std::uint64_t pa = s.paddr; pa < s.paddr + s.filesz; pa += kPage) {
      if (const std::byte* page = memory.page_data(pa)) {
        w.append(page, kPage);
        ++stats.data_pages;
      } else {
        w.zeros(kPage);
      }
    }
  }
  w.flush();
  stats.file_bytes = w.written();
  stats.segments = segments.size();
  return stats;
}

}  // namespace immortal
