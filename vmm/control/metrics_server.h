// The Prometheus endpoint (`--metrics-listen ADDR:PORT`): GET /metrics over HTTP, served by
// cpp-httplib on threads of its own. The supervisor's loop never waits for a scraper: it
// publishes a fresh exposition (InstanceMetrics::render) when something happened and at most
// every second otherwise, and the server hands out the latest one. Off unless asked for.
#pragma once

#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>

namespace httplib {
class Server;
}

namespace immortal::vmm {

struct ListenAddress {
  std::string host;  // an IPv4 or IPv6 address (without brackets) or a host name
  int port = 0;
};
// "127.0.0.1:9100", "[::1]:9100", "0.0.0.0:9100"; throws Error(ExitCode::usage) otherwise.
ListenAddress parse_listen_address(const std::string& text);

class MetricsServer {
 public:
  // Binds at once (throws Error(ExitCode::failure) when it cannot: in use, no such address).
  // With `render`, every scrape calls it (on a server thread: it must be thread-safe) instead
  // of handing out what was published: the host service gathers its instances' that way.
  explicit MetricsServer(const std::string& listen, std::function<std::string()> render = {});
  ~MetricsServer();
  MetricsServer(const MetricsServer&) = delete;
  MetricsServer& operator=(const MetricsServer&) = delete;

  void publish(std::string exposition);
  const std::string& address() const { return address_; }

 private:
  std::unique_ptr<httplib::Server> server_;
  std::thread thread_;
  std::mutex mutex_;
  std::string exposition_;
  std::string address_;
  std::function<std::string()> render_;
};

}  // namespace immortal::vmm
