#pragma once
// Tunnel: one configured listener and the sessions it spawns.
//   server mode: accept → TLS handshake (verify + authorize peer) → connect target → pump
//   client mode: accept → connect target → TLS handshake (verify + authorize peer) → pump
// The listener is a TCP port, a unix socket or a socket inherited from systemd; the target is
// TCP or a unix socket (address.h). A TLS side on a unix socket keeps TLS in userspace.
// The backend (server mode) is connected only after the peer is verified and authorized, so an
// unauthenticated peer never reaches it. Sessions are spread over the IoPool; the listener lives
// on the pool's first io_context.
//
// A session starts with the tunnel's current TunnelContext and keeps it; it never sees the Tunnel.
// It holds a token of the tunnel's base::Drain for its life, which is how the tunnel counts,
// aborts and waits for its sessions. start(), stop(), drain() and swap_context() are called from
// the app thread; the other methods from any thread.

#include <asio/ip/tcp.hpp>
#include <asio/steady_timer.hpp>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

#include "spiffe_tunnel/base/byte_stream.h"
#include "spiffe_tunnel/base/drain.h"
#include "spiffe_tunnel/base/log_limiter.h"
#include "spiffe_tunnel/base/metrics.h"
#include "spiffe_tunnel/base/result.h"
#include "spiffe_tunnel/policy/opa_client.h"
#include "spiffe_tunnel/tls/tls_context.h"
#include "spiffe_tunnel/tunnel/address.h"
#include "spiffe_tunnel/tunnel/io_pool.h"
#include "spiffe_tunnel/tunnel/tunnel_context.h"

namespace spiffe_tunnel::tunnel {

class HandshakeLimiter;
class Listener;
class Session;

// What app configures for one tunnel; Tunnel::create turns it into the listener and the first
// TunnelContext.
struct TunnelOptions {
  std::string name;
  ListenAddress listen = TcpAddress{"127.0.0.1", 0};  // port 0: pick a free port (tests)
  TargetAddress target;
  // The listener of this tunnel's previous version (Tunnel::release_listener), taken over instead
  // of opening `listen`: the address never refuses a connection across a reload.
  std::shared_ptr<Listener> listener;
  SessionLimits limits;  // every field set by the caller
  // Asked after the handshake verified and authorized the peer; null: no OPA step.
  std::shared_ptr<policy::OpaClient> opa;
  // Server mode only: announce the peer to the target with a PROXY protocol header.
  ProxyProtocol proxy_protocol = ProxyProtocol::kOff;
  bool log_sessions = true;  // the opened/closed line of each session; rejections are always logged
  // Set: the tunnel multiplexes (TunnelContext::mux, docs/multiplexing.md); TLS options must
  // carry ALPN "h2" then.
  std::optional<MuxOptions> mux;
};

class Tunnel {
 public:
  // Binds the listener now, so that "address in use" is reported at startup. `pool` must outlive
  // the tunnel; `metrics` must outlive the tunnel and its sessions.
  static base::Result<std::unique_ptr<Tunnel>> create(TunnelOptions options,
                                                      std::unique_ptr<tls::ContextProvider> tls,
                                                      IoPool& pool,
                                                      base::MetricsRegistry& metrics);
  ~Tunnel();

  void start();
  // Stops accepting. Open sessions continue until they end or close_sessions() is called. Safe
  // to call twice.
  void stop();
  // Asks every open session to end now (they close on their own threads).
  void close_sessions();
  // Blocks until no session is open or `deadline` passes; true when none is.
  bool wait_sessions_ended(std::chrono::steady_clock::time_point deadline) const;
  // Drains this tunnel alone: stop(), wait for the sessions to end until `deadline`, then close
  // the rest and wait (briefly) for them to go. Returns how many sessions had to be closed. Safe
  // to call twice.
  std::size_t drain(std::chrono::steady_clock::time_point deadline);

  // Stops accepting and hands over the listener (with the unix socket file it created), so that
  // a new version of this tunnel can take it over (TunnelOptions::listener) without the address
  // ever refusing a connection: connections wait in the backlog meanwhile. Open sessions are not
  // touched, except that carrying connections (multiplexing) are retired: they take no new
  // streams and end with their last. Null when the tunnel was stopped already. App thread, while the pool runs.
  std::shared_ptr<Listener> release_listener();

  // New sessions are authorized by `tls` (its options carry the allow-list) and `opa`; the open
  // sessions are checked against the same policy and those whose peer it no longer allows end
  // with reason policy_changed. Everything else of the context, and the listener, stay.
  void update_policy(std::unique_ptr<tls::ContextProvider> tls,
                     std::shared_ptr<policy::OpaClient> opa);

  // Asks every open session to check itself against the identity store's newest snapshot (see
  // Session::recheck_identity): call on every snapshot change. Returns at once; the checks run
  // on the sessions' threads. Any thread.
  void recheck_identity();

  // Whether new sessions log their opened/closed lines; open sessions keep theirs.
  void set_log_sessions(bool on);

  // The context new sessions start with. Any thread.
  std::shared_ptr<const TunnelContext> context() const;
  // New sessions start with `next`; open sessions keep the context they have. The listener (and
  // so the listen address) stays. `next` must name the same tunnel.
  void swap_context(std::shared_ptr<const TunnelContext> next);

  const std::string& name() const { return name_; }
  // The bound TCP endpoint; a default endpoint (port 0) when the listener is a unix socket.
  asio::ip::tcp::endpoint local_endpoint() const;
  // Where the tunnel listens: "127.0.0.1:9000", "unix:/run/app.sock", "systemd:web (...)".
  const std::string& listen_address() const;
  // True when a TLS context can be built now (identity present, SVID selected).
  bool ready() const;
  std::string readiness_detail() const;
  std::size_t active_sessions() const { return drain_.held(); }

 private:
  Tunnel(std::shared_ptr<const TunnelContext> context, IoPool& pool);
  void accept_next();
  void start_session(base::StreamSocket socket);
  void pause_accepting(const asio::error_code& ec);
  // Counts, logs (rate limited) and closes a connection refused before its handshake.
  void refuse(base::StreamSocket& socket, const TunnelContext& c, std::string_view reason,
              const std::string& detail);
  // Starts one carrying connection of a multiplexing client tunnel on `ex` (CarrierPool::Starter).
  bool start_carrier(const asio::any_io_executor& ex);
  // Sessions still alive (expired entries are pruned on the way).
  std::vector<std::shared_ptr<Session>> live_sessions();

  const std::string name_;
  IoPool& pool_;
  // Set by create(); shared with the next version after release_listener().
  std::shared_ptr<Listener> listener_;
  asio::steady_timer accept_backoff_;
  base::AcceptBackoff accept_delay_;  // used on the acceptor's thread
  // Handshakes in flight (max_handshakes, max_handshakes_per_source); shared with the sessions'
  // slots.
  std::shared_ptr<HandshakeLimiter> handshakes_;
  std::atomic<bool> started_{false};
  std::atomic<bool> stopped_{false};
  std::atomic<uint64_t> next_session_id_{1};
  base::Drain drain_;

  std::mutex sessions_mutex_;
  std::unordered_map<uint64_t, std::weak_ptr<Session>> sessions_;  // guarded by sessions_mutex_

  mutable std::mutex context_mutex_;
  std::shared_ptr<const TunnelContext> context_;  // guarded by context_mutex_
};

}  // namespace spiffe_tunnel::tunnel
