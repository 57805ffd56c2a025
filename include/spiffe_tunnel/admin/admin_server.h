#pragma once
// The admin HTTP endpoint: GET /metrics (Prometheus text), /healthz (the process runs), /readyz
// (every tunnel can take connections: identity present, SVID selected) and /status (JSON). It
// runs on its own io_context and thread, so a slow scrape never delays the data path. Requests
// are tiny and answered with "Connection: close"; HEAD gets GET's headers without the body;
// anything else gets 404/405/400. At most AdminLimits::max_connections are served at once (more
// are closed on accept), each must send its request within request_timeout, and a failing
// accept() (out of descriptors) pauses accepting for 100 ms instead of spinning.

#include <asio/io_context.hpp>
#include <asio/ip/tcp.hpp>

#include <asio/steady_timer.hpp>

#include <chrono>
#include <cstddef>
#include <functional>
#include <memory>
#include <string>
#include <thread>

#include "spiffe_tunnel/base/log_limiter.h"
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

struct AdminLimits {
  // Connections served at once; one more is closed as soon as it is accepted. Probes and
  // scrapes take milliseconds, so the cap only bites on clients that hold connections open.
  std::size_t max_connections = 16;
  // From accept to the answer sent; a client that has not sent its request head by then is
  // closed, so idle or slow clients cannot hold the slots.
  std::chrono::milliseconds request_timeout{5000};
};

class AdminServer {
 public:
  // Binds host:port now so that a bad address fails at startup.
  static base::Result<std::unique_ptr<AdminServer>> create(const std::string& host, uint16_t port,
                                                           const base::MetricsRegistry& metrics,
                                                           AdminHooks hooks,
                                                           AdminLimits limits = {});
  ~AdminServer();

  void start();
  // Stops serving and joins the thread. Safe to call twice.
  void stop();
  asio::ip::tcp::endpoint local_endpoint() const { return local_; }

 private:
  AdminServer(const base::MetricsRegistry& metrics, AdminHooks hooks, AdminLimits limits);
  void accept_next();
  void on_accepted(asio::ip::tcp::socket socket);
  void pause_accepting(const asio::error_code& ec);
  std::string respond(const std::string& method, const std::string& path) const;

  const base::MetricsRegistry& metrics_;
  AdminHooks hooks_;
  const AdminLimits limits_;
  // Admin thread only. Declared before io_: exchanges still queued in io_ when it is destroyed
  // decrement it.
  std::size_t open_ = 0;            // connections being served
  bool refusing_ = false;           // at the cap; logged once per episode
  std::size_t failed_accepts_ = 0;  // in a row; logged when the first fails and on recovery
  asio::io_context io_{1};
  asio::ip::tcp::acceptor acceptor_{io_};
  asio::steady_timer accept_backoff_{io_};
  base::AcceptBackoff accept_delay_;
  base::LogRateLimiter accept_log_{1};
  asio::ip::tcp::endpoint local_;
  std::thread thread_;
};

}  // namespace spiffe_tunnel::admin
