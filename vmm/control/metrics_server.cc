#include "control/metrics_server.h"

#include "base/error.h"

#include <httplib.h>

#include <signal.h>

#include <charconv>
#include <chrono>

namespace immortal::vmm {

ListenAddress parse_listen_address(const std::string& text) {
  auto colon = text.rfind(':');
  if (colon == std::string::npos || colon == 0 || colon + 1 == text.size())
    fail(ExitCode::usage, "--metrics-listen wants ADDRESS:PORT (e.g. 127.0.0.1:9100 or [::1]:9100), not \"{}\"", text);
  ListenAddress a;
  a.host = text.substr(0, colon);
  if (a.host.front() == '[') {
    if (a.host.back() != ']' || a.host.size() < 3) fail(ExitCode::usage, "--metrics-listen: malformed IPv6 address in \"{}\"", text);
    a.host = a.host.substr(1, a.host.size() - 2);
  }
  std::string port = text.substr(colon + 1);
  auto [end, ec] = std::from_chars(port.data(), port.data() + port.size(), a.port);
  if (ec != std::errc() || end != port.data() + port.size() || a.port < 1 || a.port > 65535)
    fail(ExitCode::usage, "--metrics-listen: \"{}\" is not a port (1-65535)", port);
  return a;
}

MetricsServer::MetricsServer(const std::string& listen, std::function<std::string()> render)
    : server_(std::make_unique<httplib::Server>()), render_(std::move(render)) {
  ListenAddress a = parse_listen_address(listen);
  address_ = listen;
  // Two threads are plenty for a scraper or two; requests are small and quick.
  server_->new_task_queue = [] { return new httplib::ThreadPool(2); };
  server_->set_payload_max_length(4096);
  server_->set_read_timeout(5, 0);
  server_->set_write_timeout(5, 0);
  server_->set_keep_alive_max_count(10);
  server_->Get("/metrics", [this](const httplib::Request&, httplib::Response& response) {
    if (render_) return response.set_content(render_(), "text/plain; version=0.0.4; charset=utf-8");
    std::lock_guard lock(mutex_);
    response.set_content(exposition_, "text/plain; version=0.0.4; charset=utf-8");
  });
  server_->Get("/", [](const httplib::Request&, httplib::Response& response) {
    response.set_content("immortal: the metrics are at /metrics\n", "text/plain");
  });
  if (!server_->bind_to_port(a.host, a.port))
    fail(ExitCode::failure, "cannot serve metrics on {}: the address is in use or not this host's", listen);
  thread_ = std::thread([this] {
    // Signals are the supervisor's main thread's (its signalfd); the pool's threads inherit this.
    sigset_t all;
    sigfillset(&all);
    ::pthread_sigmask(SIG_BLOCK, &all, nullptr);
    server_->listen_after_bind();
  });
  // stop() only ends a server that is listening: wait for that, so the destructor cannot hang.
  for (int i = 0; i < 500 && !server_->is_running(); ++i) std::this_thread::sleep_for(std::chrono::milliseconds(2));
}

MetricsServer::~MetricsServer() {
  server_->stop();
  if (thread_.joinable()) thread_.join();
}

void MetricsServer::publish(std::string exposition) {
  std::lock_guard lock(mutex_);
  exposition_ = std::move(exposition);
}

}  // namespace immortal::vmm
