#pragma once
// The admin HTTP endpoint: GET /metrics (Prometheus text), /healthz (the process runs), /readyz
// (every tunnel can take connections: identity present, SVID selected) and /status (JSON). It
// runs on its own io_context and thread, so a slow scrape never delays the data path. Requests
// are tiny and answered with "Connection: close"; anything else gets 404/405/400.

#include <asio/io_context.hpp>
#include <asio/ip/tcp.hpp>

#include <functional>
#include <memory>
#include <string>
#include <thread>

#include "spiffe_tunnel/base/metrics.h"
#include "spiffe_tunnel/base/result.h"

namespace spiffe_tunnel::admin {

struct Readiness {
  bool ready = false;
  std::string detail;  // one line per tunnel, for humans
};

struct AdminHooks {
  std::function<Readiness()> readiness;  // called on the admin thread
  std::function<std::string()> status_json;
};

class AdminServer {
 public:
  // Binds host:port now so that a bad address fails at startup.
  static base::Result<std::unique_ptr<AdminServer>> create(const std::string& host, uint16_t port,
                                                           const base::MetricsRegistry& metrics,
                                                           AdminHooks hooks);
  ~AdminServer();

  void start();
  // Stops serving and joins the thread. Safe to call twice.
  void stop();
  asio::ip::tcp::endpoint local_endpoint() const { return local_; }

 private:
  AdminServer(const base::MetricsRegistry& metrics, AdminHooks hooks);
  void accept_next();
  std::string respond(const std::string& method, const std::string& path) const;

  const base::MetricsRegistry& metrics_;
  AdminHooks hooks_;
  asio::io_context io_{1};
  asio::ip::tcp::acceptor acceptor_{io_};
  asio::ip::tcp::endpoint local_;
  std::thread thread_;
};

}  // namespace spiffe_tunnel::admin
