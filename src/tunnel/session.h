#pragma once
// Session: one proxied connection of a tunnel, from accept to close. A session lives on one
// io_context; its coroutine owns both ends. Timers that may fire after the coroutine has moved on
// hold a shared_ptr to the session, so they never touch freed state.

#include <asio/ip/tcp.hpp>
#include <asio/steady_timer.hpp>

#include <chrono>
#include <memory>
#include <string>

#include "spiffe_tunnel/base/byte_stream.h"
#include "spiffe_tunnel/pump/pump.h"
#include "spiffe_tunnel/tls/handshake.h"
#include "spiffe_tunnel/tls/tls_stream.h"
#include "spiffe_tunnel/tunnel/tunnel.h"

namespace spiffe_tunnel::tunnel {

class Session : public std::enable_shared_from_this<Session> {
 public:
  Session(Tunnel& tunnel, uint64_t id, asio::ip::tcp::socket downstream);

  void start();
  // Aborts both ends from any thread.
  void abort(std::string reason);

 private:
  asio::awaitable<void> run();
  // Server mode: TLS on the accepted socket, then connect the plain target.
  asio::awaitable<bool> open_server();
  // Client mode: connect the target, then TLS on it.
  asio::awaitable<bool> open_client();
  asio::awaitable<std::unique_ptr<tls::TlsStream>> handshake(asio::ip::tcp::socket socket);
  asio::awaitable<bool> connect_target(asio::ip::tcp::socket& out);
  // The tunnel's OPA decision for the verified peer; true when there is none to ask.
  asio::awaitable<bool> ask_opa();

  // Closes everything if not cancelled within `after`.
  void arm_deadline(std::chrono::milliseconds after, std::string what);
  void disarm_deadline();
  void arm_idle();
  void close_all();
  void reject(std::string_view reason_label, const std::string& detail);
  std::string prefix() const;
  void log_opened() const;
  void log_closed(const pump::PumpResult& r, bool server) const;

  Tunnel& tunnel_;
  const uint64_t id_;
  std::string peer_address_;
  asio::ip::tcp::socket accepted_;
  std::unique_ptr<tls::Handshake> handshake_;  // while the TLS handshake runs
  std::unique_ptr<tls::TlsStream> tls_;
  std::unique_ptr<base::TcpStream> plain_;
  // The target socket and resolver while connect_target() runs, so that a deadline or abort can
  // cancel the connect too (closing only the sockets held above would leave it running).
  asio::ip::tcp::socket* connecting_ = nullptr;
  asio::ip::tcp::resolver* resolving_ = nullptr;
  asio::steady_timer deadline_;
  asio::steady_timer idle_timer_;
  std::string timed_out_;  // what timed out, if anything
  std::chrono::steady_clock::time_point started_;
  std::chrono::steady_clock::time_point last_activity_;
  bool finished_ = false;
};

}  // namespace spiffe_tunnel::tunnel
