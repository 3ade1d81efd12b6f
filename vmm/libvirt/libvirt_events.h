// libvirt delivers domain events, QEMU monitor events and connection-close notices only to a
// process that runs an event loop. One thread runs libvirt's default loop for the life of the
// process; callbacks run on it, so whoever registers one hands its events over to its own thread
// (LibvirtMachine: a queue and an eventfd its poll loop watches).
#pragma once

namespace immortal::vmm {

// Registers libvirt's default event loop and starts its thread, once per process. Call before
// opening a connection whose events are wanted (LibvirtConnection does, with_events).
void ensure_libvirt_event_loop();

}  // namespace immortal::vmm
