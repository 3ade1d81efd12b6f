#include "libvirt/libvirt_events.h"

#include "base/error.h"

#include <libvirt/libvirt.h>

#include <signal.h>

#include <chrono>
#include <mutex>
#include <thread>

namespace immortal::vmm {

void ensure_libvirt_event_loop() {
  static std::once_flag once;
  std::call_once(once, [] {
    if (virEventRegisterDefaultImpl() != 0) fail(ExitCode::libvirt, "cannot start libvirt's event loop");
    std::thread([] {
      // Signals are the supervisor's main thread's business (its signalfd), never this one's.
      sigset_t all;
      sigfillset(&all);
      ::pthread_sigmask(SIG_BLOCK, &all, nullptr);
      for (;;)
        if (virEventRunDefaultImpl() < 0) std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }).detach();  // runs until the process ends: libvirt's loop has no way to be told to stop
  });
}

}  // namespace immortal::vmm
