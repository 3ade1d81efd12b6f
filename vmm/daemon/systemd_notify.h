// systemd's readiness protocol (sd_notify(3)): one datagram to $NOTIFY_SOCKET ("READY=1",
// "STATUS=…", "STOPPING=1"); nothing without that variable (not started by systemd).
#pragma once

#include <string>

namespace immortal::vmm {

void notify_systemd(const std::string& state);

}  // namespace immortal::vmm
