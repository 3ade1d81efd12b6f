#include "agent/sandbox.h"

#include <fcntl.h>
#include <grp.h>
#include <linux/mman.h>
#include <seccomp.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <fstream>
#include <stdexcept>
#include <string>

namespace immortal::repair {

namespace {

constexpr uid_t kNobody = 65534;

void become_nobody() {
  if (::geteuid() != 0) return;
  drop_root();
  // A change of credentials clears this: the process dies with its supervisor still.
  ::prctl(PR_SET_PDEATHSIG, SIGKILL);
  if (::getppid() == 1) throw std::runtime_error("the supervisor is gone");
}

}  // namespace

void drop_root() { drop_root_to(kNobody); }

void drop_root_to(uid_t id) {
  if (::setgroups(0, nullptr) != 0 || ::setresgid(id, id, id) != 0 || ::setresuid(id, id, id) != 0)
    throw std::runtime_error("cannot drop root");
  if (::geteuid() == 0 || ::getuid() == 0) throw std::runtime_error("still root after dropping it");
  // /proc/self stays its own (libbpf opens the module BTF memfds through it).
  ::prctl(PR_SET_DUMPABLE, 1);
}

bool sandbox_canary_set() {
  const char* canary = std::getenv("IMMORTAL_SANDBOX_CANARY");
  return canary && std::strcmp(canary, "1") == 0;
}

bool sandbox_canary_died() {
  if (!sandbox_canary_set()) return true;
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  std::string said = "immortal-repair-agent: the sandbox let socket() through (it returned " + std::to_string(fd) +
                     "): the sandbox is broken\n";
  [[maybe_unused]] auto n = ::write(2, said.data(), said.size());
  return false;
}

std::uint64_t address_space_in_use() {
  std::ifstream statm("/proc/self/statm");
  std::uint64_t pages = 0;
  statm >> pages;
  return pages * static_cast<std::uint64_t>(::sysconf(_SC_PAGESIZE));
}

void enter_sandbox(const SandboxLimits& limits) {
  become_nobody();
  // No core files of guest memory, no new descriptors beyond a few, a bounded log and heap.
  rlimit none{0, 0};
  ::setrlimit(RLIMIT_CORE, &none);
  rlimit fds{16, 16};
  ::setrlimit(RLIMIT_NOFILE, &fds);
  rlimit fsize{limits.file_size, limits.file_size};
  if (::setrlimit(RLIMIT_FSIZE, &fsize) != 0) throw std::runtime_error("cannot limit the file size");
  if (limits.address_space) {
    rlimit as{limits.address_space, limits.address_space};
    if (::setrlimit(RLIMIT_AS, &as) != 0) throw std::runtime_error("cannot limit the address space");
  }
  // A write past RLIMIT_FSIZE fails (EFBIG) instead of killing the process.
  ::signal(SIGXFSZ, SIG_IGN);
  if (::prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0) throw std::runtime_error("PR_SET_NO_NEW_PRIVS failed");

  scmp_filter_ctx ctx = seccomp_init(SCMP_ACT_KILL_PROCESS);
  if (!ctx) throw std::runtime_error("seccomp_init failed");
  int rc = 0;
  auto rule = [&](int nr, unsigned count, scmp_arg_cmp a = {}, scmp_arg_cmp b = {}) {
    if (rc != 0) return;
    if (count == 0) rc = seccomp_rule_add(ctx, SCMP_ACT_ALLOW, nr, 0);
    else if (count == 1) rc = seccomp_rule_add(ctx, SCMP_ACT_ALLOW, nr, 1, a);
    else rc = seccomp_rule_add(ctx, SCMP_ACT_ALLOW, nr, 2, a, b);
  };
  for (int nr : {SCMP_SYS(read), SCMP_SYS(write), SCMP_SYS(readv), SCMP_SYS(writev), SCMP_SYS(close), SCMP_SYS(poll),
                 SCMP_SYS(ppoll), SCMP_SYS(munmap), SCMP_SYS(brk), SCMP_SYS(madvise), SCMP_SYS(futex),
                 SCMP_SYS(clock_gettime), SCMP_SYS(gettimeofday), SCMP_SYS(nanosleep), SCMP_SYS(clock_nanosleep),
                 SCMP_SYS(exit), SCMP_SYS(exit_group), SCMP_SYS(rt_sigreturn), SCMP_SYS(rt_sigprocmask),
                 SCMP_SYS(getpid), SCMP_SYS(gettid), SCMP_SYS(fstat), SCMP_SYS(lseek), SCMP_SYS(sched_yield),
                 SCMP_SYS(getrandom),
                 // glibc's qsort (used by the instruction decoder) sizes its buffer by the RAM size
                 SCMP_SYS(sysinfo)})
    rule(nr, 0);
  // fstat of a descriptor it holds (glibc asks with an empty path), nothing by name.
  rule(SCMP_SYS(newfstatat), 1, SCMP_A3(SCMP_CMP_MASKED_EQ, AT_EMPTY_PATH, AT_EMPTY_PATH));
  // Memory for the heap, never executable; moved only within its own mappings (no MREMAP_FIXED).
  rule(SCMP_SYS(mmap), 1, SCMP_A2(SCMP_CMP_MASKED_EQ, PROT_EXEC, 0));
  rule(SCMP_SYS(mprotect), 1, SCMP_A2(SCMP_CMP_MASKED_EQ, PROT_EXEC, 0));
  rule(SCMP_SYS(mremap), 1, SCMP_A3(SCMP_CMP_MASKED_EQ, ~static_cast<scmp_datum_t>(MREMAP_MAYMOVE), 0));
  // abort() and a failed assertion signal the process itself, and nothing else.
  rule(SCMP_SYS(tgkill), 1, SCMP_A0(SCMP_CMP_EQ, static_cast<scmp_datum_t>(::getpid())));
  // Module BTF for libbpf: a memory file of its own, opened again read-only through /proc.
  rule(SCMP_SYS(memfd_create), 0);
  rule(SCMP_SYS(openat), 1,
       SCMP_A2(SCMP_CMP_MASKED_EQ, O_ACCMODE | O_CREAT | O_TRUNC | O_APPEND | O_TMPFILE, O_RDONLY));
  if (rc == 0) rc = seccomp_load(ctx);
  seccomp_release(ctx);
  if (rc != 0) throw std::runtime_error("installing the seccomp filter failed: " + std::to_string(rc));
}

}  // namespace immortal::repair
