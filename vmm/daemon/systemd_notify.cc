#include "daemon/systemd_notify.h"

#include "base/unique_fd.h"

#include <sys/socket.h>
#include <sys/un.h>

#include <algorithm>
#include <cstddef>
#include <cstdlib>

namespace immortal::vmm {

void notify_systemd(const std::string& state) {
  const char* path = std::getenv("NOTIFY_SOCKET");
  if (!path || !*path) return;
  sockaddr_un address{};
  address.sun_family = AF_UNIX;
  std::string p = path;
  if (p.size() >= sizeof address.sun_path) return;
  std::copy(p.begin(), p.end(), address.sun_path);
  if (p[0] == '@') address.sun_path[0] = '\0';  // an abstract socket
  UniqueFd fd(::socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0));
  if (!fd) return;
  ::sendto(fd.get(), state.data(), state.size(), MSG_NOSIGNAL, reinterpret_cast<sockaddr*>(&address),
           static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + p.size()));
}

}  // namespace immortal::vmm
