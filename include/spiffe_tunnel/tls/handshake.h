#pragma once
// Handshake: the TLS handshake of one connection, and the choice of its record layer.
//
// OpenSSL runs on the raw non-blocking socket (SSL_set_fd), so that it can hand the record layer
// to the kernel (kTLS) -- memory BIOs, as asio::ssl uses, never can. Readiness comes from asio
// (socket.async_wait). After the handshake, run() decides where the records go and returns the
// one TlsStream that owns the connection from then on:
//   - both directions in the kernel: KernelStream (the SSL object is freed);
//   - neither, TLS 1.3: RecordStream, the own record layer (the SSL object is freed);
//   - otherwise OpenSslStream (TLS 1.2 in userspace, TLS 1.3 with one direction offloaded).
// `ktls: on` is enforced here: a connection not offloaded both ways fails.
//
// Owned by one session and used from its thread only.

#include <chrono>
#include <memory>
#include <string>
#include <string_view>

#include <asio/awaitable.hpp>
#include <asio/generic/stream_protocol.hpp>

#include "spiffe_tunnel/base/openssl.h"
#include "spiffe_tunnel/base/result.h"
#include "spiffe_tunnel/tls/tls_context.h"
#include "spiffe_tunnel/tls/tls_stream.h"

namespace spiffe_tunnel::tls {

class Handshake {
 public:
  // Why run() returned no stream.
  struct Failure {
    // The label for logs and the rejection counter: spiffe::rejection_label() of the peer's
    // rejection, "ktls_unavailable", or "handshake_error".
    std::string reason;
    std::string detail;  // a sentence for the log
  };

  // Binds a new SSL object from `context` to `socket` (accept or connect, per the context's
  // role). The context is kept alive by the handshake and then by its stream.
  static base::Result<std::unique_ptr<Handshake>> create(
      base::StreamSocket socket, std::shared_ptr<const TlsContext> context);
  ~Handshake();
  Handshake(const Handshake&) = delete;
  Handshake& operator=(const Handshake&) = delete;

  // Runs the handshake and picks the record layer. Returns the established stream, which takes
  // the socket; or nullptr, and failure() says why. Call once.
  asio::awaitable<std::unique_ptr<TlsStream>> run();

  // Aborts: closes the socket, so that a running run() fails (for a deadline). Safe to call
  // twice, and after run() handed the socket over.
  void close();

  // What the verify callback concluded about the peer, once run() returned (a stream carries it
  // on as info().peer).
  const PeerOutcome& outcome() const { return outcome_; }
  // Once run() returned: whether the handshake resumed a session, and why a ticket was not
  // used (resumption.h kRefused*; "" when none was presented or it was used).
  bool resumed() const { return resumed_; }
  std::string_view resumption_refused() const { return resumption_refused_; }
  const Failure& failure() const { return failure_; }

 private:
  Handshake(base::StreamSocket socket, std::shared_ptr<const TlsContext> context);

  // SSL_do_handshake until it completes; false with failure_ set otherwise.
  asio::awaitable<bool> drive();
  void fail_handshake(const asio::error_code& ec);
  // Session resumption (resumption.h), client side.
  void offer_ticket();
  bool wants_ticket() const;
  asio::awaitable<void> await_ticket(std::chrono::steady_clock::duration handshake);
  // Which directions the kernel takes: OpenSSL's own offload, then TLS 1.3 receive installed
  // here. Sets kernel_tx_, kernel_rx_ and ktls_detail_.
  void enable_kernel_offload();
  // The stream that owns the record layer from now on.
  std::unique_ptr<TlsStream> hand_over();
  // RecordStream when it can take over from OpenSSL exactly, else nullptr.
  std::unique_ptr<TlsStream> start_own_records();
  ConnectionInfo connection_info(RecordLayer layer) const;

  base::StreamSocket socket_;
  std::shared_ptr<const TlsContext> context_;
  std::unique_ptr<ConnectionState> state_;  // SSL app data: declared first, freed after ssl_
  base::SslPtr ssl_;
  PeerOutcome outcome_;
  std::string error_detail_;  // the last TLS-level error as a sentence, "" if none
  const char* protocol_ = "";  // static strings of libssl, kept for ConnectionInfo
  const char* cipher_ = "";
  std::string ktls_detail_;
  std::string server_name_;  // the SNI the client sent, "" when none
  std::string alpn_;         // the agreed ALPN protocol, "" when none
  bool kernel_tx_ = false;
  bool kernel_rx_ = false;
  bool installed_rx_ = false;  // TLS 1.3 receive installed here: OpenSSL must not read again
  bool resumed_ = false;
  std::string_view resumption_refused_;  // kept here: state_ may move on with the stream
  Failure failure_;
};

}  // namespace spiffe_tunnel::tls
