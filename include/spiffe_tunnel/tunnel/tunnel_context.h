#pragma once
// TunnelContext: everything a session of one tunnel needs to know, fixed when the session starts.
// A Tunnel holds its current context as shared_ptr<const TunnelContext>; each session copies that
// pointer once at accept and keeps it for its whole life, so replacing a tunnel's context
// (Tunnel::swap_context) changes new sessions only. A context is never modified once shared; any
// thread may read it. The metrics and the OPA client it points to are thread-safe objects.

#include <asio/ip/tcp.hpp>

#include <chrono>
#include <cstddef>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

#include "spiffe_tunnel/base/log.h"
#include "spiffe_tunnel/base/log_limiter.h"
#include "spiffe_tunnel/base/metrics.h"
#include "spiffe_tunnel/mux/connection.h"
#include "spiffe_tunnel/policy/opa_client.h"
#include "spiffe_tunnel/tls/tls_context.h"
#include "spiffe_tunnel/tunnel/proxy_protocol.h"

namespace spiffe_tunnel::tunnel {

// Counters of one tunnel, registered under the tunnel's name. See docs/metrics.md. The registry
// must outlive them.
struct TunnelMetrics {
  TunnelMetrics(base::MetricsRegistry& registry, const std::string& tunnel);
  base::Counter& accepted;
  base::Counter& established;
  base::Gauge& active;
  base::Counter& bytes_in;   // from the peer (TLS side) to the target side
  base::Counter& bytes_out;  // towards the peer
  base::Counter& path_userspace;
  base::Counter& path_splice;
  base::Histogram& handshake_seconds;  // successful handshakes
  base::Histogram& session_seconds;    // established sessions, accept to close
  base::Counter& key_updates_sent;      // TLS 1.3 KeyUpdates of the own record layer
  base::Counter& key_updates_received;
  base::MetricsRegistry& registry;
  std::string tunnel;
  // Counts a refused connection under st_connections_rejected_total{tunnel,reason}.
  void reject(std::string_view reason);
  // Logs a rejection line of `reason` unless this tunnel logged kRejectLogsPerSecond of them in
  // the last second; a left-out line counts under spiffe_tunnel_log_lines_suppressed_total
  // {tunnel,reason}, and the next line that goes out is preceded by a "suppressed K similar
  // lines" summary.
  void log_rejection(std::string_view reason, const base::LogLine& line);
  static constexpr std::size_t kRejectLogsPerSecond = 10;
  std::shared_ptr<base::LogRateLimiter> reject_log =
      std::make_shared<base::LogRateLimiter>(kRejectLogsPerSecond);
  // Counts an established session that ended under spiffe_tunnel_sessions_closed_total
  // {tunnel,reason}: one of kCloseReasons, or a reason given to Session::abort().
  void closed(std::string_view reason);

  // Multiplexing (docs/multiplexing.md): carrying connections open now, streams opened and open.
  base::Gauge& mux_connections;
  base::Counter& streams_opened;
  base::Gauge& streams_active;
  // Counts a refused stream under spiffe_tunnel_streams_refused_total{tunnel,reason}.
  void refuse_stream(std::string_view reason);

  // Session resumption: successful handshakes that resumed, and tickets not used, under
  // spiffe_tunnel_resumptions_refused_total{tunnel,reason} (tls/resumption.h kRefused*).
  base::Counter& resumed;
  void resumption_refused(std::string_view reason);
};

// The reasons an established session ends for (registered at 0 for every tunnel); see
// docs/metrics.md. Session::abort() may name others.
inline constexpr std::string_view kCloseReasons[] = {
    "eof",          "idle_timeout",   "draining",            "aborted",
    "peer_error",   "plain_error",    "policy_changed",      "peer_expired",
    "peer_untrusted", "local_identity_lost", "max_connection_age", "aead_limit"};

// Timeouts and limits of one tunnel's sessions. No defaults here: the configuration model
// (config::TunnelConfig) owns them, and app fills every field; Tunnel::create refuses zeros
// where they would make no sense.
struct SessionLimits {
  std::chrono::milliseconds handshake_timeout{};
  std::chrono::milliseconds connect_timeout{};
  std::chrono::milliseconds idle_timeout{};  // 0: no idle limit
  std::chrono::milliseconds max_connection_age{};  // from accept; 0: no limit
  std::size_t max_connections = 0;  // established sessions; handshakes count separately
  std::size_t max_handshakes = 0;   // handshakes in flight, whole tunnel; 0: no limit
  std::size_t max_handshakes_per_source = 0;  // per IPv4 address / IPv6 /64; 0: no limit
  std::size_t buffer_size = 0;  // per direction of the userspace pump, and the splice pipe size
};

// How often a session moving bytes through a kernel TLS direction reads the kernel's record
// sequence numbers (TlsStream::kernel_key_spent): after `bytes` bytes or `chunks` pump steps,
// whichever comes first -- 4 MiB or 64 steps at the default key_update_records (2^23), scaled
// down with lower limits so that a session ends near the limit, not far past it.
struct KeyCheckCadence {
  std::size_t bytes;
  std::size_t chunks;
};
KeyCheckCadence key_check_cadence(uint64_t key_update_records);

// The end the tunnel connects to: TCP host:port, or a unix socket when unix_path is set.
struct Target {
  std::string host;
  std::string port;
  // host:port as an endpoint when host is an IP literal (no lookup needed), else nullopt.
  std::optional<asio::ip::tcp::endpoint> literal;
  std::string unix_path;  // non-empty: a unix stream socket; host and port are unused

  // Fills `literal` when host and port allow it.
  static Target of(std::string host, std::string port);
  static Target unix_socket(std::string path);
  std::string str() const { return unix_path.empty() ? host + ":" + port : "unix:" + unix_path; }
};

class CarrierPool;

// Multiplexing of a tunnel (HTTP/2 CONNECT over its mTLS connections; docs/multiplexing.md).
struct MuxOptions {
  mux::Settings settings;
  // Client mode: carrying connections each data-path thread keeps to the server tunnel at most,
  // and the CONNECT authority (the server tunnel's target, "host:port").
  std::size_t connections = 1;
  std::string authority;
};

struct TunnelContext {
  std::string name;
  tls::Role mode = tls::Role::kServer;  // server: TLS in, plain out; client: the reverse
  SessionLimits limits;
  Target target;
  // Asked after the handshake verified and authorized the peer; null: no OPA step. (The
  // allow-list sits in the TLS options.)
  std::shared_ptr<policy::OpaClient> opa;
  std::shared_ptr<const tls::ContextProvider> tls;  // never null
  std::shared_ptr<TunnelMetrics> metrics;           // never null
  // Server mode: a PROXY protocol header to the target before the peer's first byte.
  ProxyProtocol proxy_protocol = ProxyProtocol::kOff;
  bool log_sessions = true;  // log each session's opened/closed lines (rejections always)
  // Set: the tunnel multiplexes. Server mode: connections that agreed on ALPN "h2" carry CONNECT
  // streams to `target`; others stay dedicated. Client mode: every accepted connection becomes a
  // stream on a carrying connection from `carriers` (never null then).
  std::optional<MuxOptions> mux;
  std::shared_ptr<CarrierPool> carriers;

  std::string_view mode_name() const { return mode == tls::Role::kServer ? "server" : "client"; }
};

}  // namespace spiffe_tunnel::tunnel
