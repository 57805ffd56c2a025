#pragma once
// Session: one proxied connection of a tunnel, from accept to close. It keeps the TunnelContext
// it started with and the drain token the tunnel gave it, and knows nothing else of the tunnel.
// A session lives on one io_context; its coroutine owns both ends, the target socket and resolver
// while it connects, and the TLS stream. Timers that may fire after the coroutine has moved on
// hold a shared_ptr to the session, so they never touch freed state.

#include <asio/ip/tcp.hpp>
#include <asio/steady_timer.hpp>

#include <array>
#include <chrono>
#include <memory>
#include <optional>
#include <string>

#include "spiffe_tunnel/base/byte_stream.h"
#include "spiffe_tunnel/base/drain.h"
#include "spiffe_tunnel/base/log.h"
#include "spiffe_tunnel/mux/connection.h"
#include "spiffe_tunnel/pump/pump.h"
#include "spiffe_tunnel/tls/handshake.h"
#include "spiffe_tunnel/tls/tls_stream.h"
#include "spiffe_tunnel/tunnel/tunnel_context.h"
#include "tunnel/handshake_limiter.h"

namespace spiffe_tunnel::tunnel {

class Session : public std::enable_shared_from_this<Session> {
 public:
  Session(std::shared_ptr<const TunnelContext> context, uint64_t id,
          base::StreamSocket downstream);

  // Runs the session on its socket's io_context; `token` is released when the session ends.
  void start(base::DrainToken token);
  // The tunnel's handshake slot of this connection, given back when the handshake ends.
  void hold_handshake_slot(HandshakeLimiter::Slot slot) { handshake_slot_ = std::move(slot); }
  // Aborts both ends from any thread; `reason` ends up in the session's closing line, and
  // `label` (a short snake_case word, e.g. "draining" or "policy_changed") in the reason label of
  // spiffe_tunnel_sessions_closed_total when the session was established.
  void abort(std::string reason, std::string label = "aborted");
  // Checks the session's peer against the policy of `next` (its TLS options' allow-list, then
  // its OPA step) and ends the session with reason policy_changed when that no longer allows the
  // peer. A session still in its handshake is checked once it has been authorized. Any thread.
  void recheck(std::shared_ptr<const TunnelContext> next);
  // Checks an established session against the identity store's newest snapshot, on the
  // session's thread: the peer's kept chain verified again against the current bundle of its
  // trust domain (peer_untrusted, peer_expired), and the SVID this side presents still held
  // (local_identity_lost). Any thread; cheap for the caller (one post).
  void recheck_identity();
  uint64_t id() const { return id_; }
  // Makes this session a carrying connection of a multiplexing client tunnel (before start()):
  // it connects the target, runs the handshake and then carries the streams of `carriers`.
  void set_carrier() { carrier_ = true; }
  // A carrying connection takes no new streams and ends once its open ones have (GOAWAY on the
  // server side); a dedicated session is not affected. Any thread.
  void retire();

 private:
  asio::awaitable<void> run();
  // Server mode: TLS on the accepted socket, then connect the plain target.
  asio::awaitable<bool> open_server();
  // Client mode: connect the target, then TLS on it.
  asio::awaitable<bool> open_client();
  // Server mode with proxy_protocol: the PROXY header to the target, before any peer byte.
  asio::awaitable<bool> send_proxy_header();
  // The TLS handshake on `socket`; on success tls_ holds the verified, authorized stream.
  asio::awaitable<bool> handshake(base::StreamSocket socket);
  // Connects target_ to the context's target.
  asio::awaitable<bool> connect_target();
  // The TCP part of connect_target(): the literal address, or each address the name resolves to.
  asio::awaitable<void> connect_tcp_target(asio::error_code& ec);
  // The tunnel's OPA decision for the verified peer; true when there is none to ask.
  asio::awaitable<bool> ask_opa();
  void count_and_log(const pump::PumpResult& r) const;
  // The peer is verified and authorized: count, log, check validity and a pending policy.
  void mark_established();
  // Multiplexing (session_mux.cc). A carrying connection, either side: HTTP/2 over tls_ until
  // it ends; the server side serves each CONNECT stream.
  asio::awaitable<void> carry_streams();
  // True once established when this session carries streams rather than one connection.
  bool mux_wanted() const;
  // Client mode, multiplexed: the accepted connection as one stream of a carrying connection.
  asio::awaitable<void> run_stream();
  // The carrier's "opened" facts are the dedicated session's; its closing line is its own.
  void log_carrier_closed(const std::string& why) const;
  // recheck() on the session's thread, once the peer is authorized.
  void apply_policy(std::shared_ptr<const TunnelContext> next);
  asio::awaitable<void> ask_opa_again(std::shared_ptr<const TunnelContext> next);
  void end_by_policy(const std::string& detail);
  // The validity check (session_validity.h) at the clock's now: ends the session, or arms
  // validity_timer_ for the next moment something runs out (a notAfter, max_connection_age).
  void check_validity();
  // Logs the "ending" line and closes the session; `label` becomes the close reason.
  void end_session(std::string_view label, const std::string& detail);
  // Counts and logs a KeyUpdate of the own record layer.
  void note_key_update(const tls::KeyUpdateEvent& e);
  // After `bytes` moved: at every `every`, ends the session (aead_limit) when a kernel TLS
  // direction's key has protected `limit` (key_update_records) records.
  void watch_kernel_keys(std::size_t bytes, uint64_t limit, KeyCheckCadence every);
  // The reason label of an established session that ended with `r`.
  std::string_view close_label(const pump::PumpResult& r) const;

  // Closes everything if not cancelled within `after`.
  void arm_deadline(std::chrono::milliseconds after, std::string what);
  void disarm_deadline();
  void arm_idle();
  void close_all();
  // Counts and logs a refused connection; `peer_id` when the peer is known (after the handshake).
  void reject(std::string_view reason_label, const std::string& detail,
              std::string_view peer_id = {});
  // tunnel, session and from: who every line of this session is about.
  std::array<base::LogField, 3> log_context() const;
  bool logs_sessions() const;
  void log_opened() const;
  void log_closed(const pump::PumpResult& r) const;

  const std::shared_ptr<const TunnelContext> context_;
  const uint64_t id_;
  base::DrainToken token_;
  std::string peer_address_;
  // The accepted connection's two ends (nullopt when not IP), kept for the PROXY header only:
  // null when the tunnel sends none, so that other sessions do not carry them.
  struct Ends {
    std::optional<asio::ip::tcp::endpoint> peer;
    std::optional<asio::ip::tcp::endpoint> local;
  };
  std::unique_ptr<const Ends> proxy_ends_;
  base::StreamSocket accepted_;
  HandshakeLimiter::Slot handshake_slot_;
  // The target while connect_target() runs (then moved into plain_ or the TLS stream), and the
  // resolver when the target is a name: both are closed or cancelled by a deadline or abort.
  base::StreamSocket target_;
  std::optional<asio::ip::tcp::resolver> resolver_;
  // The handshake while it runs (a deadline or abort closes it), then the stream it hands over.
  std::unique_ptr<tls::Handshake> handshake_;
  std::unique_ptr<tls::TlsStream> tls_;
  std::unique_ptr<base::TcpStream> plain_;
  // Multiplexing: the HTTP/2 connection this session carries, or the stream it is.
  std::shared_ptr<mux::Connection> mux_;
  std::unique_ptr<mux::Stream> stream_;
  bool carrier_ = false;  // a client tunnel's carrying connection (set_carrier)
  std::string last_rejection_;  // the detail of reject(), for the carrier pool
  asio::steady_timer deadline_;
  asio::steady_timer idle_timer_;
  asio::steady_timer validity_timer_;  // armed by check_validity() once established
  std::string timed_out_;  // what timed out, if anything
  std::string abort_label_;  // set with timed_out_ by abort() and the idle timer
  std::chrono::steady_clock::time_point started_;
  std::chrono::steady_clock::time_point last_activity_;
  bool finished_ = false;
  bool authorized_ = false;  // the peer passed this session's policy; pumping may start
  // Bytes and pump steps since the kernel's record counters were last read.
  std::size_t key_check_bytes_ = 0;
  std::size_t key_check_chunks_ = 0;
  // A policy that arrived while the peer was not yet authorized; applied right after.
  std::shared_ptr<const TunnelContext> pending_policy_;
};

}  // namespace spiffe_tunnel::tunnel
