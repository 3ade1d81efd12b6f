#include "libvirt/libvirt_events.h"

#include "base/error.h"
#include "libvirt/libvirt_connection.h"

#include <libvirt/libvirt-qemu.h>
#include <libvirt/libvirt.h>

#include <signal.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <chrono>
#include <thread>

namespace immortal::vmm {

void ensure_libvirt_event_loop() {
  static std::once_flag once;
  std::call_once(once, [] {
    if (virEventRegisterDefaultImpl() != 0) fail(ExitCode::libvirt, "cannot start libvirt's event loop");
    std::thread([] {
      // Signals are the main thread's business (its signalfd), never this one's.
      sigset_t all;
      sigfillset(&all);
      ::pthread_sigmask(SIG_BLOCK, &all, nullptr);
      for (;;)
        if (virEventRunDefaultImpl() < 0) std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }).detach();  // runs until the process ends: libvirt's loop has no way to be told to stop
  });
}

LibvirtEventInbox::LibvirtEventInbox() : wake_(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK)) {
  if (!wake_) fail_os(ExitCode::failure, "eventfd", errno);
}

void LibvirtEventInbox::post(Item item) {
  {
    std::lock_guard lock(mutex_);
    if (items_.size() >= kLimit) return;
    items_.push_back(std::move(item));
  }
  std::uint64_t one = 1;
  (void)!::write(wake_.get(), &one, sizeof one);
}

std::deque<LibvirtEventInbox::Item> LibvirtEventInbox::take() {
  std::uint64_t count = 0;
  (void)!::read(wake_.get(), &count, sizeof count);
  std::lock_guard lock(mutex_);
  return std::exchange(items_, {});
}

namespace {

using Inbox = LibvirtEventInbox;
using Source = Inbox::Item::Source;

void* new_ref(const std::shared_ptr<Inbox>& inbox) { return new std::shared_ptr<Inbox>(inbox); }
void free_ref(void* opaque) { delete static_cast<std::shared_ptr<Inbox>*>(opaque); }
Inbox& inbox_of(void* opaque) { return **static_cast<std::shared_ptr<Inbox>*>(opaque); }

void on_monitor_event(virConnectPtr, virDomainPtr, const char* event, long long seconds, unsigned int micros,
                      const char* details, void* opaque) {
  nlohmann::json data = details ? nlohmann::json::parse(details, nullptr, false) : nlohmann::json();
  if (data.is_discarded()) data = nlohmann::json();
  Inbox::Item item{Source::monitor, event ? event : "", std::move(data), static_cast<double>(seconds) + micros / 1e6, 0, 0, "", ""};
  inbox_of(opaque).post(std::move(item));
}

int on_lifecycle(virConnectPtr, virDomainPtr dom, int event, int detail, void* opaque) {
  Inbox::Item item{Source::lifecycle, "", nlohmann::json(), 0, event, detail, "", ""};
  char uuid[VIR_UUID_STRING_BUFLEN] = {};
  if (dom && virDomainGetUUIDString(dom, uuid) == 0) item.domain_uuid = uuid;
  if (const char* name = dom ? virDomainGetName(dom) : nullptr) item.domain = name;
  inbox_of(opaque).post(std::move(item));
  return 0;
}

void on_close(virConnectPtr, int reason, void* opaque) {
  inbox_of(opaque).post({Source::closed, "", nlohmann::json(), 0, reason, 0, "", ""});
}

}  // namespace

int watch_monitor_events(virConnectPtr connection, virDomainPtr dom, const std::shared_ptr<Inbox>& inbox) {
  int id = virConnectDomainQemuMonitorEventRegister(connection, dom, nullptr, on_monitor_event, new_ref(inbox), free_ref, 0);
  if (id < 0) fail_libvirt("cannot follow QEMU's events");
  return id;
}

int watch_lifecycle(virConnectPtr connection, virDomainPtr dom, const std::shared_ptr<Inbox>& inbox) {
  int id = virConnectDomainEventRegisterAny(connection, dom, VIR_DOMAIN_EVENT_ID_LIFECYCLE,
                                            VIR_DOMAIN_EVENT_CALLBACK(on_lifecycle), new_ref(inbox), free_ref);
  if (id < 0) fail_libvirt("cannot follow the domains' lifecycle");
  return id;
}

bool watch_close(virConnectPtr connection, const std::shared_ptr<Inbox>& inbox) {
  return virConnectRegisterCloseCallback(connection, on_close, new_ref(inbox), free_ref) == 0;
}

void unwatch_close(virConnectPtr connection) { virConnectUnregisterCloseCallback(connection, on_close); }

}  // namespace immortal::vmm
