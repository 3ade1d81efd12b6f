// libvirt delivers domain events, QEMU monitor events and connection-close notices only to a
// process that runs an event loop. One thread runs libvirt's default loop for the life of the
// process; its callbacks only post to an inbox (a bounded queue and an eventfd) that the
// supervisor's or the daemon's own poll loop drains on its thread.
#pragma once

#include "base/unique_fd.h"

#include <nlohmann/json.hpp>

#include <deque>
#include <memory>
#include <mutex>
#include <string>

typedef struct _virConnect* virConnectPtr;
typedef struct _virDomain* virDomainPtr;

namespace immortal::vmm {

// Registers libvirt's default event loop and starts its thread, once per process. Call before
// opening a connection whose events are wanted (LibvirtConnection does, with_events).
void ensure_libvirt_event_loop();

class LibvirtEventInbox {
 public:
  struct Item {
    enum class Source { monitor, lifecycle, closed } source;
    std::string name;  // monitor: the QMP event
    nlohmann::json data;
    double at = 0;     // monitor: QEMU's timestamp (wall-clock seconds)
    int event = 0, detail = 0;       // lifecycle: virDomainEventType and its detail; closed: the reason
    std::string domain, domain_uuid;  // lifecycle: which domain
  };
  static constexpr std::size_t kLimit = 4096;  // a guest resetting in a loop must not grow it without end

  LibvirtEventInbox();
  int fd() const { return wake_.get(); }  // readable when there is something to take
  void post(Item item);
  std::deque<Item> take();

 private:
  std::mutex mutex_;
  std::deque<Item> items_;
  UniqueFd wake_;
};

// Callbacks that post to the inbox; each holds a reference to it until libvirt lets go. dom
// nullptr: every domain of the connection. Throw Error(ExitCode::libvirt) when libvirt refuses.
int watch_monitor_events(virConnectPtr connection, virDomainPtr dom, const std::shared_ptr<LibvirtEventInbox>& inbox);
int watch_lifecycle(virConnectPtr connection, virDomainPtr dom, const std::shared_ptr<LibvirtEventInbox>& inbox);
bool watch_close(virConnectPtr connection, const std::shared_ptr<LibvirtEventInbox>& inbox);
void unwatch_close(virConnectPtr connection);

}  // namespace immortal::vmm
