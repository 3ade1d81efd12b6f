#include "agent/sandbox.h"

#include <seccomp.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/resource.h>

#include <stdexcept>
#include <string>

namespace immortal::repair {

void enter_sandbox() {
  // No core files of guest memory, no new descriptors beyond what it holds.
  rlimit none{0, 0};
  ::setrlimit(RLIMIT_CORE, &none);
  rlimit fds{16, 16};
  ::setrlimit(RLIMIT_NOFILE, &fds);
  if (::prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0) throw std::runtime_error("PR_SET_NO_NEW_PRIVS failed");

  scmp_filter_ctx ctx = seccomp_init(SCMP_ACT_KILL_PROCESS);
  if (!ctx) throw std::runtime_error("seccomp_init failed");
  int rc = 0;
  auto allow = [&](int nr) {
    if (rc == 0) rc = seccomp_rule_add(ctx, SCMP_ACT_ALLOW, nr, 0);
  };
  for (int nr : {SCMP_SYS(read), SCMP_SYS(write), SCMP_SYS(readv), SCMP_SYS(writev), SCMP_SYS(close), SCMP_SYS(poll),
                 SCMP_SYS(ppoll), SCMP_SYS(munmap), SCMP_SYS(brk), SCMP_SYS(madvise), SCMP_SYS(futex),
                 SCMP_SYS(clock_gettime), SCMP_SYS(gettimeofday), SCMP_SYS(nanosleep), SCMP_SYS(clock_nanosleep),
                 SCMP_SYS(exit), SCMP_SYS(exit_group), SCMP_SYS(rt_sigreturn), SCMP_SYS(rt_sigprocmask),
                 SCMP_SYS(getpid), SCMP_SYS(gettid), SCMP_SYS(fstat), SCMP_SYS(newfstatat), SCMP_SYS(lseek),
                 SCMP_SYS(sched_yield), SCMP_SYS(getrandom),
                 // glibc's qsort (used by the instruction decoder) sizes its buffer by the RAM size
                 SCMP_SYS(sysinfo)})
    allow(nr);
  // Memory for the heap, never executable.
  if (rc == 0) rc = seccomp_rule_add(ctx, SCMP_ACT_ALLOW, SCMP_SYS(mmap), 1, SCMP_A2(SCMP_CMP_MASKED_EQ, PROT_EXEC, 0));
  if (rc == 0) rc = seccomp_rule_add(ctx, SCMP_ACT_ALLOW, SCMP_SYS(mremap), 0);
  if (rc == 0) rc = seccomp_rule_add(ctx, SCMP_ACT_ALLOW, SCMP_SYS(mprotect), 1, SCMP_A2(SCMP_CMP_MASKED_EQ, PROT_EXEC, 0));
  // abort() and the kill of a failed assertion end the process as they would anyway.
  if (rc == 0) rc = seccomp_rule_add(ctx, SCMP_ACT_ALLOW, SCMP_SYS(tgkill), 0);
  if (rc == 0) rc = seccomp_load(ctx);
  seccomp_release(ctx);
  if (rc != 0) throw std::runtime_error("installing the seccomp filter failed: " + std::to_string(rc));
}

}  // namespace immortal::repair
