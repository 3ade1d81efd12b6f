// immortal-mcast-join GROUP IFNAME [SECONDS]: joins an IPv4 multicast group on an interface
// through a socket option (IP_ADD_MEMBERSHIP), as any multicast receiver does, then holds the
// membership for SECONDS (default 0). The kernel adds the group's address to the device's list
// under the socket's lock and rtnl_lock and calls the driver's ndo_set_rx_mode(): the recovery
// tests crash a driver there (tests/integration/real_drivers_test.cc).
#include <arpa/inet.h>
#include <net/if.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>

int main(int argc, char** argv) {
  if (argc < 3 || argc > 4) {
    std::fprintf(stderr, "usage: immortal-mcast-join GROUP IFNAME [SECONDS]\n");
    return 2;
  }
  ip_mreqn request{};
  if (inet_pton(AF_INET, argv[1], &request.imr_multiaddr) != 1) {
    std::fprintf(stderr, "immortal-mcast-join: %s is not an IPv4 address\n", argv[1]);
    return 2;
  }
  request.imr_ifindex = static_cast<int>(if_nametoindex(argv[2]));
  if (request.imr_ifindex == 0) {
    std::fprintf(stderr, "immortal-mcast-join: no interface %s\n", argv[2]);
    return 2;
  }
  int fd = socket(AF_INET, SOCK_DGRAM, 0);
  if (fd < 0 || setsockopt(fd, IPPROTO_IP, IP_ADD_MEMBERSHIP, &request, sizeof request) != 0) {
    std::fprintf(stderr, "immortal-mcast-join: %s\n", std::strerror(errno));
    return 1;
  }
  std::printf("joined %s on %s\n", argv[1], argv[2]);
  std::fflush(stdout);
  if (argc == 4) sleep(static_cast<unsigned>(std::atoi(argv[3])));
  return 0;
}
