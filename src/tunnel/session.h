#pragma once
// Session: one proxied connection of a tunnel, from accept to close. It keeps the TunnelContext
// it started with and the drain token the tunnel gave it, and knows nothing else of the tunnel.
// A session lives on one io_context; its coroutine owns both ends, the target socket and resolver
// while it connects, and the TLS stream. Timers that may fire after the coroutine has moved on
// hold a shared_ptr to the session, so they never touch freed state.

#include <asio/ip/tcp.hpp>
#include <asio/steady_timer.hpp>

#include <chrono>
#include <memory>
#include <optional>
#include <string>

#include "spiffe_tunnel/base/byte_stream.h"
#include "spiffe_tunnel/base/drain.h"
#include "spiffe_tunnel/pump/pump.h"
#include "spiffe_tunnel/tls/handshake.h"
#include "spiffe_tunnel/tls/tls_stream.h"
#include "spiffe_tunnel/tunnel/tunnel_context.h"

namespace spiffe_tunnel::tunnel {

class Session : public std::enable_shared_from_this<Session> {
 public:
  Session(std::shared_ptr<const TunnelContext> context, uint64_t id,
          base::StreamSocket downstream);

  // Runs the session on its socket's io_context; `token` is released when the session ends.
  void start(base::DrainToken token);
  // Aborts both ends from any thread; `reason` ends up in the session's closing line.
  void abort(std::string reason);

 private:
  asio::awaitable<void> run();
  // Server mode: TLS on the accepted socket, then connect the plain target.
  asio::awaitable<bool> open_server();
  // Client mode: connect the target, then TLS on it.
  asio::awaitable<bool> open_client();
  // The TLS handshake on `socket`; on success tls_ holds the verified, authorized stream.
  asio::awaitable<bool> handshake(base::StreamSocket socket);
  // Connects target_ to the context's target.
  asio::awaitable<bool> connect_target();
  // The TCP part of connect_target(): the literal address, or each address the name resolves to.
  asio::awaitable<void> connect_tcp_target(asio::error_code& ec);
  // The tunnel's OPA decision for the verified peer; true when there is none to ask.
  asio::awaitable<bool> ask_opa();
  void count_and_log(const pump::PumpResult& r) const;

  // Closes everything if not cancelled within `after`.
  void arm_deadline(std::chrono::milliseconds after, std::string what);
  void disarm_deadline();
  void arm_idle();
  void close_all();
  void reject(std::string_view reason_label, const std::string& detail);
  std::string prefix() const;
  void log_opened() const;
  void log_closed(const pump::PumpResult& r) const;

  const std::shared_ptr<const TunnelContext> context_;
  const uint64_t id_;
  base::DrainToken token_;
  std::string peer_address_;
  base::StreamSocket accepted_;
  // The target while connect_target() runs (then moved into plain_ or the TLS stream), and the
  // resolver when the target is a name: both are closed or cancelled by a deadline or abort.
  base::StreamSocket target_;
  std::optional<asio::ip::tcp::resolver> resolver_;
  // The handshake while it runs (a deadline or abort closes it), then the stream it hands over.
  std::unique_ptr<tls::Handshake> handshake_;
  std::unique_ptr<tls::TlsStream> tls_;
  std::unique_ptr<base::TcpStream> plain_;
  asio::steady_timer deadline_;
  asio::steady_timer idle_timer_;
  std::string timed_out_;  // what timed out, if anything
  std::chrono::steady_clock::time_point started_;
  std::chrono::steady_clock::time_point last_activity_;
  bool finished_ = false;
};

}  // namespace spiffe_tunnel::tunnel
