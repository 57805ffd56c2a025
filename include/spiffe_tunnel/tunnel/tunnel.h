#pragma once
// Tunnel: one configured listener and the sessions it spawns.
//   server mode: accept TCP → TLS handshake (verify + authorize peer) → connect target → pump
//   client mode: accept TCP → connect target → TLS handshake (verify + authorize peer) → pump
// The backend (server mode) is connected only after the peer is verified and authorized, so an
// unauthenticated peer never reaches it. Sessions are spread over the IoPool; the listener lives
// on the pool's first io_context. start()/stop() are called from the app thread; counters may be
// read from any thread.

#include <asio/ip/tcp.hpp>
#include <asio/steady_timer.hpp>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <unordered_map>

#include "spiffe_tunnel/base/metrics.h"
#include "spiffe_tunnel/base/result.h"
#include "spiffe_tunnel/policy/opa_client.h"
#include "spiffe_tunnel/tls/tls_context.h"
#include "spiffe_tunnel/tunnel/io_pool.h"

namespace spiffe_tunnel::tunnel {

struct TunnelOptions {
  std::string name;
  std::string listen_host = "127.0.0.1";
  uint16_t listen_port = 0;          // 0: pick a free port (tests)
  std::string target_host;
  std::string target_port;
  std::chrono::milliseconds handshake_timeout{10000};
  std::chrono::milliseconds connect_timeout{10000};
  std::chrono::milliseconds idle_timeout{0};  // 0: no idle limit
  std::size_t max_connections = 10000;
  std::size_t buffer_size = 256 * 1024;
  // Asked after the handshake verified and authorized the peer; null: no OPA step.
  std::shared_ptr<policy::OpaClient> opa;
};

// Counters of one tunnel, registered under the tunnel's name. See docs/metrics.md.
struct TunnelMetrics {
  TunnelMetrics(base::MetricsRegistry& registry, const std::string& tunnel);
  base::Counter& accepted;
  base::Counter& established;
  base::Gauge& active;
  base::Counter& bytes_in;   // from the peer (TLS side) to the target side
  base::Counter& bytes_out;  // towards the peer
  base::Counter& path_userspace;
  base::Counter& path_splice;
  base::MetricsRegistry& registry;
  std::string tunnel;
  // Counts a refused connection under st_connections_rejected_total{tunnel,reason}.
  void reject(std::string_view reason);
};

class Session;

class Tunnel {
 public:
  // Binds the listener now, so that "address in use" is reported at startup.
  static base::Result<std::unique_ptr<Tunnel>> create(TunnelOptions options,
                                                      std::unique_ptr<tls::ContextProvider> tls,
                                                      IoPool& pool,
                                                      base::MetricsRegistry& metrics);
  ~Tunnel();

  void start();
  // Stops accepting. Open sessions continue until they end or close_sessions() is called.
  void stop();
  // Aborts every open session.
  void close_sessions();

  const TunnelOptions& options() const { return options_; }
  asio::ip::tcp::endpoint local_endpoint() const { return local_; }
  // True when a TLS context can be built now (identity present, SVID selected).
  bool ready() const;
  std::string readiness_detail() const;
  std::size_t active_sessions() const;
  // The target as an endpoint when it is an IP literal (no lookup needed), else nullopt.
  const std::optional<asio::ip::tcp::endpoint>& target_endpoint() const { return target_ip_; }
  tls::ContextProvider& tls() { return *tls_; }
  TunnelMetrics& metrics() { return metrics_; }

 private:
  friend class Session;
  Tunnel(TunnelOptions options, std::unique_ptr<tls::ContextProvider> tls, IoPool& pool,
         base::MetricsRegistry& metrics);
  void accept_next();
  void on_session_end(uint64_t id);

  TunnelOptions options_;
  std::unique_ptr<tls::ContextProvider> tls_;
  IoPool& pool_;
  TunnelMetrics metrics_;
  asio::ip::tcp::acceptor acceptor_;
  asio::steady_timer accept_backoff_;
  std::optional<asio::ip::tcp::endpoint> target_ip_;
  asio::ip::tcp::endpoint local_;
  std::atomic<bool> stopped_{false};
  std::atomic<uint64_t> next_session_id_{1};

  mutable std::mutex sessions_mutex_;
  std::unordered_map<uint64_t, std::weak_ptr<Session>> sessions_;  // guarded by sessions_mutex_
};

}  // namespace spiffe_tunnel::tunnel
