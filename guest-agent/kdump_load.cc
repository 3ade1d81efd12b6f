// immortal-kdump-load: arms kdump in the guest. It loads a crash kernel and its initramfs into
// the memory the running kernel reserved at boot (crashkernel=), with kexec_file_load(2) and
// KEXEC_FILE_ON_CRASH: from then on an oops (with panic_on_oops) or a panic boots that kernel
// instead of stopping, as kdump-tools arranges on a real system. The guest image has no
// kexec-tools; this is the one system call they would make. A static binary, like the agent.
//
//   immortal-kdump-load [--kernel FILE] [--initrd FILE] [--append CMDLINE]
//   immortal-kdump-load --unload
//
// Defaults: the guest image's /boot/vmlinuz and /boot/kdump-initrd.img, and a command line
// for a kdump kernel (one CPU, devices reset, the serial console). Exit status 0 when
// /sys/kernel/kexec_crash_loaded reads 1 afterwards (0 after --unload), else 1; 2 for bad usage.
#include <fcntl.h>
#include <linux/kexec.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <string>

namespace {

constexpr char kCrashLoaded[] = "/sys/kernel/kexec_crash_loaded";
constexpr char kCrashSize[] = "/sys/kernel/kexec_crash_size";

// First line of a sysfs file, or "" when it cannot be read.
std::string read_line(const char* path) {
  std::string line;
  if (std::FILE* f = std::fopen(path, "re")) {
    char buf[64];
    if (std::fgets(buf, sizeof buf, f)) line = buf;
    std::fclose(f);
  }
  while (!line.empty() && (line.back() == '\n' || line.back() == ' ')) line.pop_back();
  return line;
}

// What an errno of kexec_file_load usually means here (kernel/kexec_file.c, arch/x86).
const char* hint(int err) {
  switch (err) {
    case ENOEXEC: return " (not a kernel image this kernel can load: x86 needs a bzImage)";
    case EADDRNOTAVAIL:
    case ENOMEM: return " (the image does not fit the reserved crash memory: a larger crashkernel=?)";
    case EKEYREJECTED:
    case EBADMSG:
    case ENOKEY: return " (the kernel image's signature was refused)";
    case EPERM: return " (needs CAP_SYS_BOOT, and a kernel not locked down)";
    case EBUSY: return " (a kexec is already in progress)";
    case ENOSYS: return " (this kernel has no KEXEC_FILE)";
    default: return "";
  }
}

int usage() {
  std::fprintf(stderr,
               "usage: immortal-kdump-load [--kernel FILE] [--initrd FILE] [--append CMDLINE]\n"
               "       immortal-kdump-load --unload\n");
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  std::string kernel = "/boot/vmlinuz", initrd = "/boot/kdump-initrd.img";
  std::string append = "console=ttyS0 reset_devices nr_cpus=1 irqpoll";
  bool unload = false;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--unload") unload = true;
    else if ((a == "--kernel" || a == "--initrd" || a == "--append") && i + 1 < argc)
      (a == "--kernel" ? kernel : a == "--initrd" ? initrd : append) = argv[++i];
    else return usage();
  }

  if (unload) {
    if (syscall(SYS_kexec_file_load, -1, -1, 0UL, nullptr, KEXEC_FILE_UNLOAD | KEXEC_FILE_ON_CRASH) != 0) {
      int err = errno;
      std::fprintf(stderr, "immortal-kdump-load: cannot unload the crash kernel: %s%s\n", std::strerror(err), hint(err));
      return 1;
    }
    std::printf("immortal-kdump-load: crash kernel unloaded\n");
    return read_line(kCrashLoaded) == "0" ? 0 : 1;
  }

  // Without reserved memory the syscall fails with a vague error: say what is missing instead.
  std::string reserved = read_line(kCrashSize);
  if (reserved.empty() || reserved == "0") {
    std::fprintf(stderr, "immortal-kdump-load: no crash memory reserved (%s is %s): boot the guest with "
                 "crashkernel=SIZE on its kernel command line\n", kCrashSize, reserved.empty() ? "unreadable" : "0");
    return 1;
  }
  int kernel_fd = open(kernel.c_str(), O_RDONLY | O_CLOEXEC);
  if (kernel_fd < 0) {
    std::fprintf(stderr, "immortal-kdump-load: cannot open the crash kernel %s: %s\n", kernel.c_str(), std::strerror(errno));
    return 1;
  }
  int initrd_fd = open(initrd.c_str(), O_RDONLY | O_CLOEXEC);
  if (initrd_fd < 0) {
    std::fprintf(stderr, "immortal-kdump-load: cannot open the crash initramfs %s: %s\n", initrd.c_str(), std::strerror(errno));
    return 1;
  }
  // The length counts the terminating NUL (kexec_file_load(2)).
  if (syscall(SYS_kexec_file_load, kernel_fd, initrd_fd, append.size() + 1, append.c_str(), KEXEC_FILE_ON_CRASH) != 0) {
    int err = errno;
    std::fprintf(stderr, "immortal-kdump-load: kexec_file_load of %s with %s failed: %s%s\n", kernel.c_str(),
                 initrd.c_str(), std::strerror(err), hint(err));
    return 1;
  }
  close(kernel_fd);
  close(initrd_fd);
  std::string loaded = read_line(kCrashLoaded);
  if (loaded != "1") {
    std::fprintf(stderr, "immortal-kdump-load: the call succeeded but %s reads \"%s\", not 1\n", kCrashLoaded, loaded.c_str());
    return 1;
  }
  std::printf("immortal-kdump-load: crash kernel %s loaded (initramfs %s, %s bytes of crash memory), command line: %s\n",
              kernel.c_str(), initrd.c_str(), reserved.c_str(), append.c_str());
  return 0;
}
