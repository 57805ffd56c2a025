#include "spiffe_tunnel/tls/handshake.h"

#include <openssl/err.h>
#include <sys/socket.h>

#include <algorithm>
#include <cassert>
#include <chrono>
#include <utility>

#include <asio/experimental/awaitable_operators.hpp>
#include <asio/redirect_error.hpp>
#include <asio/steady_timer.hpp>
#include <asio/use_awaitable.hpp>

#include "spiffe_tunnel/tls/ktls.h"
#include "spiffe_tunnel/tls/record_cipher.h"
#include "tls/kernel_stream.h"
#include "tls/openssl_stream.h"
#include "tls/record_stream.h"
#include "tls/socket_io.h"

namespace spiffe_tunnel::tls {

base::Result<std::unique_ptr<Handshake>> Handshake::create(
    base::StreamSocket socket, std::shared_ptr<const TlsContext> context) {
  std::unique_ptr<Handshake> h(new Handshake(std::move(socket), std::move(context)));
  if (!h->ssl_) {
    return base::make_error("SSL_new failed: " + base::drain_openssl_errors());
  }
  asio::error_code ec;
  h->socket_.non_blocking(true, ec);
  if (ec || SSL_set_fd(h->ssl_.get(), h->socket_.native_handle()) != 1) {
    return base::make_error("cannot bind TLS to socket: " + base::drain_openssl_errors());
  }
  SSL_set_app_data(h->ssl_.get(), h->state_.get());
  const TlsOptions& opts = h->context_->options();
  if (opts.role == Role::kServer) {
    SSL_set_accept_state(h->ssl_.get());
  } else {
    SSL_set_connect_state(h->ssl_.get());
    if (!opts.server_name.empty()) {
      SSL_set_tlsext_host_name(h->ssl_.get(), opts.server_name.c_str());
    }
    if (!opts.alpn.empty()) {
      const std::string wire = std::string(1, static_cast<char>(opts.alpn.size())) + opts.alpn;
      SSL_set_alpn_protos(h->ssl_.get(), reinterpret_cast<const unsigned char*>(wire.data()),
                          static_cast<unsigned>(wire.size()));
    }
    h->offer_ticket();
  }
  return h;
}

// Client: offers the cached ticket of this remote endpoint, while it is good and the tunnel's
// rules still accept the server it was issued by.
void Handshake::offer_ticket() {
  SessionCache* cache = context_->sessions();
  asio::error_code ec;
  const auto remote = socket_.remote_endpoint(ec);
  if (cache == nullptr || ec) {
    return;
  }
  const auto* data = reinterpret_cast<const unsigned char*>(remote.data());
  state_->endpoint.assign(reinterpret_cast<const char*>(data), remote.size());
  bool expired = false;
  auto entry = cache->find(state_->endpoint, context_->clock().now(), expired);
  if (!entry) {
    state_->resumption_refused = expired ? kRefusedExpired : std::string_view();
    return;
  }
  policy::Decision d = context_->options().authorizer->authorize(*entry->peer->peer_id);
  if (!d.allowed) {
    cache->forget(state_->endpoint);
    state_->resumption_refused = kRefusedNotAuthorized;
    return;
  }
  // A copy for this connection: OpenSSL marks a connection's session not resumable when its SSL
  // object is freed without a close_notify sent, as it is once the record layer moved on.
  SSL_SESSION* copy = SSL_SESSION_dup(entry->session.get());
  const bool set = copy != nullptr && SSL_set_session(ssl_.get(), copy) == 1;
  SSL_SESSION_free(copy);  // the SSL holds its own reference
  if (!set) {
    return;
  }
  auto peer = std::make_shared<PeerOutcome>(*entry->peer);
  peer->authorized_by = d.reason;
  state_->resumed_peer = std::move(peer);
}

Handshake::Handshake(base::StreamSocket socket, std::shared_ptr<const TlsContext> context)
    : socket_(std::move(socket)),
      context_(std::move(context)),
      state_(std::make_unique<ConnectionState>()),
      ssl_(SSL_new(context_->ssl_ctx())) {}

Handshake::~Handshake() = default;

void Handshake::close() {
  asio::error_code ignored;
  socket_.close(ignored);
}

asio::awaitable<std::unique_ptr<TlsStream>> Handshake::run() {
  const auto began = std::chrono::steady_clock::now();
  const bool completed = co_await drive();
  resumption_refused_ = state_->resumption_refused;
  if (!completed) {
    co_return nullptr;
  }
  if (wants_ticket()) {
    co_await await_ticket(std::chrono::steady_clock::now() - began);
    if (!failure_.reason.empty()) {
      co_return nullptr;
    }
  }
  protocol_ = SSL_get_version(ssl_.get());
  const SSL_CIPHER* suite = SSL_get_current_cipher(ssl_.get());
  cipher_ = suite != nullptr ? SSL_CIPHER_get_name(suite) : "none";
  if (const char* sni = SSL_get_servername(ssl_.get(), TLSEXT_NAMETYPE_host_name)) {
    server_name_ = sni;
  }
  const unsigned char* alpn = nullptr;
  unsigned alpn_len = 0;
  SSL_get0_alpn_selected(ssl_.get(), &alpn, &alpn_len);
  alpn_.assign(reinterpret_cast<const char*>(alpn), alpn_len);
  enable_kernel_offload();
  if (context_->options().ktls == KtlsMode::kOn && !(kernel_tx_ && kernel_rx_)) {
    failure_ = {"ktls_unavailable", "ktls is \"on\" but this connection (" +
                                        std::string(protocol_) + " " + cipher_ +
                                        ") was not offloaded both ways: " + ktls_detail_};
    co_return nullptr;
  }
  co_return hand_over();
}

asio::awaitable<bool> Handshake::drive() {
  asio::error_code ec;
  for (;;) {
    ERR_clear_error();
    const int ret = SSL_do_handshake(ssl_.get());
    if (ret == 1) {
      break;
    }
    const SocketWait wait = classify_ssl_result(ssl_.get(), ret, ec, error_detail_);
    if (wait != SocketWait::kNone) {
      co_await wait_ready(socket_, wait, ec);
    }
    if (wait == SocketWait::kNone || ec) {
      outcome_ = state_->outcome;
      fail_handshake(ec);
      co_return false;
    }
  }
  if (SSL_session_reused(ssl_.get()) == 1) {
    // No certificate was exchanged: the peer is the one the ticket (server) or the cache
    // (client) vouched for, verified in full when the ticket was issued and authorized again
    // just now. Without one, fail closed.
    resumed_ = state_->resumed_peer != nullptr && state_->resumed_peer->verified;
    if (!resumed_) {
      failure_ = {"handshake_error", "session resumed without a verified peer on record"};
      co_return false;
    }
    outcome_ = *state_->resumed_peer;
    co_return true;
  }
  if (state_->resumed_peer && context_->options().role == Role::kClient) {
    // We offered a ticket and the server chose a full handshake: the ticket is of no more use.
    context_->sessions()->forget(state_->endpoint);
    state_->resumption_refused = kRefusedDeclined;
  }
  outcome_ = state_->outcome;
  if (!outcome_.verified) {
    // The verify callback must have accepted the peer; a handshake that finishes without it
    // (which OpenSSL should never allow with SSL_VERIFY_PEER) is refused.
    outcome_.rejection = spiffe::Rejection::kNoCertificate;
    outcome_.detail = "handshake completed without a verified peer certificate";
    failure_ = {std::string(spiffe::rejection_label(outcome_.rejection)), outcome_.detail};
    co_return false;
  }
  co_return true;
}

bool Handshake::wants_ticket() const {
  SessionCache* cache = context_->sessions();
  return cache != nullptr && !resumed_ && !state_->endpoint.empty() &&
         SSL_version(ssl_.get()) == TLS1_3_VERSION &&
         !cache->silent(state_->endpoint, std::chrono::steady_clock::now());
}

// Client after a full handshake: the server sends its ticket right after our Finished, ahead of
// any data. OpenSSL reads it here (SSL_peek processes post-handshake messages and leaves data
// where it is), counting the records, so that the record layer after OpenSSL -- the kernel's
// or the own one -- starts at the right sequence number. Waits about three handshakes, at least
// 100 ms and at most 1 s; a server that sent nothing in that time is not waited for again for a
// minute (it has resumption off).
asio::awaitable<void> Handshake::await_ticket(std::chrono::steady_clock::duration handshake) {
  using namespace std::chrono_literals;
  const auto limit = std::clamp<std::chrono::steady_clock::duration>(3 * handshake, 100ms, 1s);
  const auto deadline = std::chrono::steady_clock::now() + limit;
  state_->count_read_records = true;
  asio::steady_timer timer(socket_.get_executor());
  while (!state_->ticket_received) {
    char byte = 0;
    ERR_clear_error();
    const int n = SSL_peek(ssl_.get(), &byte, 1);
    if (n > 0 || state_->ticket_received) {
      break;  // data came first: OpenSSL keeps it, and stays the record layer (hand_over)
    }
    asio::error_code ec;
    const SocketWait wait = classify_ssl_result(ssl_.get(), n, ec, error_detail_);
    if (wait != SocketWait::kRead) {
      failure_ = {"handshake_error", "connection failed while waiting for the session ticket: " +
                                         (error_detail_.empty() ? ec.message() : error_detail_)};
      break;
    }
    const auto now = std::chrono::steady_clock::now();
    if (now >= deadline) {
      context_->sessions()->mark_silent(state_->endpoint, now + 60s);
      break;
    }
    // Readable, or the deadline: whichever comes first cancels the other.
    using namespace asio::experimental::awaitable_operators;
    timer.expires_at(deadline);
    asio::error_code timer_ec;
    co_await (wait_ready(socket_, SocketWait::kRead, ec) ||
              timer.async_wait(asio::redirect_error(asio::use_awaitable, timer_ec)));
    if (ec && ec != asio::error::operation_aborted) {
      failure_ = {"handshake_error", "connection failed while waiting for the session ticket: " +
                                         ec.message()};
      break;
    }
  }
  state_->count_read_records = false;
}

void Handshake::fail_handshake(const asio::error_code& ec) {
  if (outcome_.rejection == spiffe::Rejection::kNone && !outcome_.verified &&
      error_detail_.find("peer did not return a certificate") != std::string::npos) {
    outcome_.rejection = spiffe::Rejection::kNoCertificate;
    outcome_.detail = "peer sent no client certificate";
  }
  if (outcome_.rejection != spiffe::Rejection::kNone) {
    failure_ = {std::string(spiffe::rejection_label(outcome_.rejection)), outcome_.detail};
    return;
  }
  const asio::error_code code = ec ? ec : asio::error::connection_aborted;
  failure_ = {"handshake_error",
              "TLS handshake failed: " + (error_detail_.empty() ? code.message() : error_detail_)};
}

void Handshake::enable_kernel_offload() {
  kernel_tx_ = BIO_get_ktls_send(SSL_get_wbio(ssl_.get())) != 0;
  kernel_rx_ = BIO_get_ktls_recv(SSL_get_rbio(ssl_.get())) != 0;
  const std::vector<unsigned char>& secret = state_->peer_traffic_secret;
  if (context_->options().ktls == KtlsMode::kOff) {
    return;
  }
  if (!kernel_tx_) {
    asio::error_code ec;
    const bool unix_socket = socket_.local_endpoint(ec).protocol().family() == AF_UNIX;
    ktls_detail_ = unix_socket ? "kernel TLS needs TCP; this is a unix socket"
                               : "OpenSSL did not offload transmit (kernel without tls module, "
                                 "or cipher " + std::string(cipher_) + " not offloadable)";
  }
  // OpenSSL 3.0 never offloads TLS 1.3 receive: do it here, from the captured traffic secret.
  if (!kernel_rx_ && SSL_version(ssl_.get()) == TLS1_3_VERSION && kernel_tx_) {
    if (SSL_has_pending(ssl_.get()) != 0) {
      // A record already sits in OpenSSL's buffer; the kernel would start at the wrong one.
      ktls_detail_ = "receive not offloaded: OpenSSL holds buffered records";
    } else if (secret.empty()) {
      ktls_detail_ = "receive not offloaded: traffic secret unavailable";
    } else if (auto st = ktls::install_tls13_rx(socket_.native_handle(), cipher_, secret,
                                                state_->records_read)) {
      kernel_rx_ = true;
      installed_rx_ = true;
    } else {
      ktls_detail_ = "receive not offloaded: " + st.error().message;
    }
  }
}

std::unique_ptr<TlsStream> Handshake::hand_over() {
  std::unique_ptr<TlsStream> stream;
  if (!kernel_tx_ && !kernel_rx_) {
    stream = start_own_records();
  } else if (kernel_tx_ && kernel_rx_ && SSL_has_pending(ssl_.get()) == 0) {
    // Both directions in the kernel and nothing left in OpenSSL's buffers: the SSL object can
    // go. TLS 1.3 receive was installed here under the same condition; TLS 1.2 receive by
    // OpenSSL, which must not have read past the handshake. KernelStream handles post-handshake
    // messages either way (TLS 1.2 renegotiation is refused, as OpenSSL does with kTLS).
    stream = std::make_unique<KernelStream>(std::move(socket_), connection_info(RecordLayer::kKernel));
  }
  // Receive installed here means OpenSSL must never read again: only the kernel stream follows.
  assert(!installed_rx_ || stream != nullptr);
  OPENSSL_cleanse(state_->peer_traffic_secret.data(), state_->peer_traffic_secret.size());
  OPENSSL_cleanse(state_->own_traffic_secret.data(), state_->own_traffic_secret.size());
  state_->peer_traffic_secret = {};
  state_->own_traffic_secret = {};
  if (stream) {
    ssl_.reset();  // the buffers, transcript and the peer's parsed chain go with it
    return stream;
  }
  return std::make_unique<OpenSslStream>(std::move(socket_), connection_info(RecordLayer::kOpenSsl),
                                         std::move(ssl_), std::move(state_), kernel_tx_,
                                         kernel_rx_);
}

std::unique_ptr<TlsStream> Handshake::start_own_records() {
  // Conditions for taking over from OpenSSL exactly: TLS 1.3; nothing read ahead (OpenSSL reads
  // no further than the peer's Finished while read-ahead is off during the handshake, and no
  // further than a ticket a client waited for). The sequence numbers go on after the records
  // OpenSSL read (a client's ticket) and wrote (a server's tickets) under the first traffic keys.
  SSL* ssl = ssl_.get();
  if (SSL_version(ssl) != TLS1_3_VERSION || SSL_has_pending(ssl) != 0 ||
      state_->peer_traffic_secret.empty() || state_->own_traffic_secret.empty()) {
    return nullptr;
  }
  auto rx = RecordCipher::create(cipher_, state_->peer_traffic_secret,
                                 RecordCipher::Direction::kOpen, state_->records_read);
  auto tx = RecordCipher::create(cipher_, state_->own_traffic_secret,
                                 RecordCipher::Direction::kSeal, state_->tickets_sent);
  if (!rx || !tx) {
    return nullptr;
  }
  return std::make_unique<RecordStream>(std::move(socket_), connection_info(RecordLayer::kUserspace),
                                        std::move(rx).value(), std::move(tx).value(),
                                        context_->options().key_update_records);
}

ConnectionInfo Handshake::connection_info(RecordLayer layer) const {
  return ConnectionInfo{outcome_, protocol_,    cipher_, layer, ktls_detail_,
                        context_, server_name_, alpn_,  resumed_};
}

}  // namespace spiffe_tunnel::tls
