#include "accelerator.h"

#include "base/error.h"
#include "base/unique_fd.h"

#include <fcntl.h>
#include <linux/kvm.h>
#include <signal.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <poll.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <cstring>

namespace immortal::vmm {

namespace {

constexpr std::uint32_t kLoopIterations = 1'000'000;  // two instructions each
constexpr int kProbeTimeLimitMs = 1000;

void on_alarm(int) {}  // only interrupts KVM_RUN (EINTR)

// Runs the probe; returns instructions per second, or a negative value with *why set.
double measure_kvm(std::string* why) {
  UniqueFd kvm(::open("/dev/kvm", O_RDWR | O_CLOEXEC));
  if (!kvm) {
    *why = std::string("/dev/kvm: ") + std::strerror(errno);
    return -1;
  }
  if (::ioctl(kvm.get(), KVM_GET_API_VERSION, 0) != KVM_API_VERSION) {
    *why = "/dev/kvm speaks an unknown API version";
    return -1;
  }
  UniqueFd vm(::ioctl(kvm.get(), KVM_CREATE_VM, 0));
  if (!vm) {
    *why = std::string("KVM_CREATE_VM: ") + std::strerror(errno);
    return -1;
  }
  // Real-mode code at guest-physical 0:  mov ecx, N;  1: dec ecx;  jnz 1b;  hlt
  const std::uint8_t code[] = {0x66, 0xb9, kLoopIterations & 0xff, (kLoopIterations >> 8) & 0xff,
                               (kLoopIterations >> 16) & 0xff, (kLoopIterations >> 24) & 0xff,
                               0x66, 0x49, 0x75, 0xfc, 0xf4};
  void* mem = ::mmap(nullptr, 0x1000, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (mem == MAP_FAILED) {
    *why = "mmap failed";
    return -1;
  }
  std::memcpy(mem, code, sizeof code);
  kvm_userspace_memory_region region{};
  region.slot = 0;
  region.guest_phys_addr = 0;
  region.memory_size = 0x1000;
  region.userspace_addr = reinterpret_cast<std::uint64_t>(mem);
  double rate = -1;
  do {
    if (::ioctl(vm.get(), KVM_SET_USER_MEMORY_REGION, &region) != 0) {
      *why = std::string("KVM_SET_USER_MEMORY_REGION: ") + std::strerror(errno);
      break;
    }
    UniqueFd vcpu(::ioctl(vm.get(), KVM_CREATE_VCPU, 0));
    int run_size = ::ioctl(kvm.get(), KVM_GET_VCPU_MMAP_SIZE, 0);
    if (!vcpu || run_size <= 0) {
      *why = "cannot create a KVM vCPU";
      break;
    }
    void* run_map = ::mmap(nullptr, static_cast<std::size_t>(run_size), PROT_READ | PROT_WRITE, MAP_SHARED, vcpu.get(), 0);
    if (run_map == MAP_FAILED) {
      *why = "cannot map the KVM vCPU";
      break;
    }
    auto* run = static_cast<kvm_run*>(run_map);
    kvm_sregs sregs{};
    kvm_regs regs{};
    if (::ioctl(vcpu.get(), KVM_GET_SREGS, &sregs) == 0) {
      sregs.cs.base = 0;
      sregs.cs.selector = 0;
      ::ioctl(vcpu.get(), KVM_SET_SREGS, &sregs);
    }
    regs.rip = 0;
    regs.rflags = 2;
    ::ioctl(vcpu.get(), KVM_SET_REGS, &regs);

    struct sigaction action {}, old {};
    action.sa_handler = on_alarm;  // no SA_RESTART: KVM_RUN returns EINTR
    ::sigaction(SIGALRM, &action, &old);
    itimerval timer{};
    timer.it_value.tv_sec = kProbeTimeLimitMs / 1000;
    timer.it_value.tv_usec = (kProbeTimeLimitMs % 1000) * 1000;
    ::setitimer(ITIMER_REAL, &timer, nullptr);
    auto start = std::chrono::steady_clock::now();
    int r = ::ioctl(vcpu.get(), KVM_RUN, 0);
    int err = errno;
    auto elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    timer = {};
    ::setitimer(ITIMER_REAL, &timer, nullptr);
    ::sigaction(SIGALRM, &old, nullptr);

    if (r == 0 && run->exit_reason == KVM_EXIT_HLT) {
      rate = (2.0 * kLoopIterations + 2) / std::max(elapsed, 1e-6);
    } else if (r < 0 && err == EINTR) {
      rate = 0;
      *why = "KVM did not run 2 million instructions within 1 s";
    } else {
      *why = fmt::format("the KVM probe guest stopped unexpectedly (exit reason {})", run->exit_reason);
    }
    ::munmap(run_map, static_cast<std::size_t>(run_size));
  } while (false);
  ::munmap(mem, 0x1000);
  return rate;
}

// The probe runs in a child process: whatever KVM does (a KVM_RUN that ignores the timer, a
// stray SIGALRM), the supervisor only waits a bounded time for one line of answer.
double measure_kvm_isolated(std::string* why) {
  int fds[2];
  if (::pipe2(fds, O_CLOEXEC) != 0) {
    *why = "pipe failed";
    return -1;
  }
  UniqueFd read_end(fds[0]), write_end(fds[1]);
  pid_t pid = ::fork();
  if (pid < 0) {
    *why = "fork failed";
    return -1;
  }
  if (pid == 0) {
    read_end.reset();
    std::string reason;
    double r = measure_kvm(&reason);
    std::string line = fmt::format("{} {}", r, reason);
    (void)!::write(write_end.get(), line.data(), line.size());
    ::_exit(0);
  }
  write_end.reset();
  std::string answer;
  auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(3 * kProbeTimeLimitMs);
  for (;;) {
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
    pollfd p{read_end.get(), POLLIN, 0};
    if (left.count() <= 0 || ::poll(&p, 1, static_cast<int>(left.count())) == 0) break;
    char buf[512];
    ssize_t n = ::read(read_end.get(), buf, sizeof buf);
    if (n <= 0) break;
    answer.append(buf, static_cast<std::size_t>(n));
  }
  ::kill(pid, SIGKILL);
  ::waitpid(pid, nullptr, 0);
  char* end = nullptr;
  double rate = std::strtod(answer.c_str(), &end);
  if (answer.empty() || end == answer.c_str()) {
    *why = "the KVM probe did not finish in time";
    return -1;
  }
  if (*end == ' ') ++end;
  *why = end;
  return rate;
}

}  // namespace

AcceleratorChoice choose_accelerator() {
  AcceleratorChoice choice;
  std::string why;
  double rate = measure_kvm_isolated(&why);
  if (rate < 0) {
    choice.reason = fmt::format("KVM is not usable ({}); using TCG (software emulation)", why);
    return choice;
  }
  choice.kvm_instructions_per_second = rate;
  if (rate >= kFastKvmInstructionsPerSecond) {
    choice.accelerator = Accelerator::kvm;
    choice.reason = fmt::format("KVM runs guest code at {:.0f} M instructions/s (hardware speed)", rate / 1e6);
  } else if (rate == 0) {
    choice.reason = fmt::format("{}: it emulates instructions instead of running them; using TCG", why);
  } else {
    choice.reason = fmt::format("KVM runs guest code at only {:.1f} M instructions/s (it emulates; fast is >= {:.0f} M/s); using TCG",
                                rate / 1e6, kFastKvmInstructionsPerSecond / 1e6);
  }
  return choice;
}

}  // namespace immortal::vmm
