#include "spiffe_tunnel/tls/tls_stream.h"

#include "spiffe_tunnel/tls/ktls.h"

#include <openssl/err.h>
#include <sys/socket.h>

#include <cerrno>
#include <cstring>

#include <asio/redirect_error.hpp>
#include <asio/use_awaitable.hpp>

namespace spiffe_tunnel::tls {

namespace {
// OpenSSL's read buffer with read-ahead: room for several 16 KiB records per read().
constexpr size_t kReadAheadBuffer = 64 * 1024;
}  // namespace

base::Result<std::unique_ptr<TlsStream>> TlsStream::create(
    asio::ip::tcp::socket socket, std::shared_ptr<const TlsContext> context) {
  std::unique_ptr<TlsStream> s(new TlsStream(std::move(socket), std::move(context)));
  if (!s->ssl_) {
    return base::make_error("SSL_new failed: " + base::drain_openssl_errors());
  }
  asio::error_code ec;
  s->socket_.non_blocking(true, ec);
  if (ec || SSL_set_fd(s->ssl_.get(), s->socket_.native_handle()) != 1) {
    return base::make_error("cannot bind TLS to socket: " + base::drain_openssl_errors());
  }
  SSL_set_app_data(s->ssl_.get(), s->state_.get());
  const TlsOptions& opts = s->context_->options();
  if (opts.role == Role::kServer) {
    SSL_set_accept_state(s->ssl_.get());
  } else {
    SSL_set_connect_state(s->ssl_.get());
    if (!opts.server_name.empty()) {
      SSL_set_tlsext_host_name(s->ssl_.get(), opts.server_name.c_str());
    }
  }
  return s;
}

TlsStream::TlsStream(asio::ip::tcp::socket socket, std::shared_ptr<const TlsContext> context)
    : socket_(std::move(socket)),
      context_(std::move(context)),
      ssl_(SSL_new(context_->ssl_ctx())),
      state_(std::make_unique<ConnectionState>()) {}

TlsStream::~TlsStream() = default;

bool TlsStream::classify(int ret, asio::error_code& ec) {
  want_write_ = false;
  const int err = SSL_get_error(ssl_.get(), ret);
  switch (err) {
    case SSL_ERROR_WANT_READ:
      return true;
    case SSL_ERROR_WANT_WRITE:
      want_write_ = true;
      return true;
    case SSL_ERROR_ZERO_RETURN:
      error_detail_ = "peer closed the TLS session";
      ec = asio::error::eof;
      return false;
    case SSL_ERROR_SYSCALL: {
      const int saved = errno;
      std::string queued = base::drain_openssl_errors();
      error_detail_ = saved != 0 ? std::string("socket error: ") + std::strerror(saved)
                                 : "connection closed by peer" + (queued.empty() ? "" : ": " + queued);
      ec = saved != 0 ? asio::error_code(saved, asio::system_category())
                      : asio::error::connection_reset;
      return false;
    }
    default: {
      const unsigned long code = ERR_peek_last_error();
      std::string queued = base::drain_openssl_errors();
      if (ERR_GET_REASON(code) == SSL_R_UNEXPECTED_EOF_WHILE_READING) {
        error_detail_ = "peer closed the connection without close_notify";
        ec = asio::error::connection_reset;
      } else {
        error_detail_ = queued.empty() ? "TLS error" : queued;
        ec = asio::error::connection_aborted;
      }
      return false;
    }
  }
}

asio::awaitable<bool> TlsStream::wait_for_retry(int ret, asio::error_code& ec, bool* eof) {
  if (!classify(ret, ec)) {
    if (ec == asio::error::eof && eof != nullptr) {
      *eof = true;
    }
    co_return false;
  }
  co_await socket_.async_wait(
      want_write_ ? asio::ip::tcp::socket::wait_write : asio::ip::tcp::socket::wait_read,
      asio::redirect_error(asio::use_awaitable, ec));
  co_return !ec;
}

asio::awaitable<void> TlsStream::handshake(asio::error_code& ec) {
  ec.clear();
  for (;;) {
    ERR_clear_error();
    const int ret = SSL_do_handshake(ssl_.get());
    if (ret == 1) {
      break;
    }
    if (!co_await wait_for_retry(ret, ec)) {
      if (!ec) {
        ec = asio::error::connection_aborted;
      }
      if (state_->outcome.rejection == spiffe::Rejection::kNone && !state_->outcome.verified &&
          error_detail_.find("peer did not return a certificate") != std::string::npos) {
        state_->outcome.rejection = spiffe::Rejection::kNoCertificate;
        state_->outcome.detail = "peer sent no client certificate";
      }
      co_return;
    }
  }
  if (!state_->outcome.verified) {
    // The verify callback must have accepted the peer; a handshake that finishes without it
    // (which OpenSSL should never allow with SSL_VERIFY_PEER) is refused.
    state_->outcome.rejection = spiffe::Rejection::kNoCertificate;
    state_->outcome.detail = "handshake completed without a verified peer certificate";
    ec = asio::error::access_denied;
    co_return;
  }
  enable_kernel_offload();
  if (!ktls_rx_) {
    // Userspace receive: let OpenSSL read several records per read() instead of a 5-byte header
    // and then the body. Only now, after the handshake: buffered records would keep the kernel
    // from taking over receive.
    SSL_set_default_read_buffer_len(ssl_.get(), kReadAheadBuffer);
    SSL_set_read_ahead(ssl_.get(), 1);
  }
  // The handshake leaves OpenSSL's record buffers allocated; an idle session should not hold them.
  SSL_free_buffers(ssl_.get());
}

void TlsStream::enable_kernel_offload() {
  ktls_tx_ = BIO_get_ktls_send(SSL_get_wbio(ssl_.get())) != 0;
  ktls_rx_ = BIO_get_ktls_recv(SSL_get_rbio(ssl_.get())) != 0;
  std::vector<unsigned char>& secret = state_->peer_traffic_secret;
  if (context_->options().ktls == KtlsMode::kOff) {
    return;
  }
  if (!ktls_tx_) {
    ktls_detail_ = "OpenSSL did not offload transmit (kernel without tls module, or cipher " +
                   cipher() + " not offloadable)";
  }
  // OpenSSL 3.0 never offloads TLS 1.3 receive: do it here, from the captured traffic secret.
  if (!ktls_rx_ && SSL_version(ssl_.get()) == TLS1_3_VERSION && ktls_tx_) {
    if (SSL_has_pending(ssl_.get()) != 0) {
      // A record already sits in OpenSSL's buffer; the kernel would start at the wrong one.
      ktls_detail_ = "receive not offloaded: OpenSSL holds buffered records";
    } else if (secret.empty()) {
      ktls_detail_ = "receive not offloaded: traffic secret unavailable";
    } else if (auto st = ktls::install_tls13_rx(socket_.native_handle(), cipher(), secret)) {
      ktls_rx_ = true;
      manual_rx_ = true;
    } else {
      ktls_detail_ = "receive not offloaded: " + st.error().message;
    }
  }
  OPENSSL_cleanse(secret.data(), secret.size());
  secret.clear();
}

// Reads from a socket whose receive side the kernel decrypts: plaintext comes with its record
// type. Non-data records are handled here, where they arrive (RFC 8446 §4.6, §6).
std::size_t TlsStream::try_read_kernel(std::span<char> buf, asio::error_code& ec) {
  for (;;) {
    ktls::Record rec;
    const int r = ktls::read_record(socket_.native_handle(), buf, rec);
    if (r < 0) {
      const int e = errno;
      if (e == EAGAIN || e == EWOULDBLOCK) {
        ec = asio::error::would_block;
        return 0;
      }
      error_detail_ = e == EBADMSG ? "record authentication failed (bad_record_mac)"
                                   : std::string("kernel TLS receive: ") + std::strerror(e);
      ec = asio::error_code(e, asio::system_category());
      return 0;
    }
    if (r == 0) {
      error_detail_ = "peer closed the connection without close_notify";
      ec = asio::error::connection_reset;
      return 0;
    }
    switch (rec.type) {
      case ktls::kApplicationData:
        if (rec.size == 0) {
          continue;
        }
        return rec.size;
      case ktls::kAlert:
        if (rec.size >= 2 && static_cast<uint8_t>(buf[1]) == 0) {
          return 0;  // close_notify: a clean end of the peer's direction
        }
        error_detail_ = "peer sent alert " +
                        ktls::alert_name(rec.size >= 2 ? static_cast<uint8_t>(buf[1]) : 255);
        ec = asio::error::connection_aborted;
        return 0;
      case ktls::kHandshake: {
        constexpr uint8_t kNewSessionTicket = 4;
        constexpr uint8_t kKeyUpdate = 24;
        const uint8_t msg = rec.size > 0 ? static_cast<uint8_t>(buf[0]) : 0;
        if (msg == kNewSessionTicket) {
          continue;  // sessions are never resumed; a third-party server's ticket is dropped
        }
        error_detail_ =
            msg == kKeyUpdate
                ? "peer sent a TLS 1.3 KeyUpdate; this connection's receive key lives in the "
                  "kernel, which cannot be re-keyed here; closing"
                : "unexpected post-handshake message " + std::to_string(msg);
        ec = asio::error::connection_aborted;
        return 0;
      }
      default:
        error_detail_ = "unexpected TLS record type " + std::to_string(rec.type);
        ec = asio::error::connection_aborted;
        return 0;
    }
  }
}

std::size_t TlsStream::try_read(std::span<char> buf, asio::error_code& ec) {
  ec.clear();
  if (manual_rx_) {
    return try_read_kernel(buf, ec);
  }
  ERR_clear_error();
  size_t n = 0;
  const int ret = SSL_read_ex(ssl_.get(), buf.data(), buf.size(), &n);
  if (state_->peer_key_update && ktls_tx_) {
    error_detail_ =
        "peer sent a TLS 1.3 KeyUpdate; OpenSSL 3.0 cannot re-key kernel transmit offload; "
        "closing";
    ec = asio::error::connection_aborted;
    return 0;
  }
  if (ret == 1) {
    want_write_ = false;
    return n;
  }
  if (classify(ret, ec)) {
    // OpenSSL keeps its ~17 KiB read buffer while it waits for the next record, even with
    // SSL_MODE_RELEASE_BUFFERS; hand it back so that idle sessions cost little memory. A partial
    // record in the buffer makes this a no-op.
    SSL_free_buffers(ssl_.get());
    ec = asio::error::would_block;
  } else if (ec == asio::error::eof) {
    ec.clear();  // close_notify: end of stream
  }
  return 0;
}

asio::awaitable<void> TlsStream::wait_readable(asio::error_code& ec) {
  ec.clear();
  if (!manual_rx_ && SSL_has_pending(ssl_.get()) != 0) {
    co_return;
  }
  co_await socket_.async_wait(
      want_write_ ? asio::ip::tcp::socket::wait_write : asio::ip::tcp::socket::wait_read,
      asio::redirect_error(asio::use_awaitable, ec));
}

asio::awaitable<std::size_t> TlsStream::read_some(std::span<char> buf, asio::error_code& ec) {
  for (;;) {
    const std::size_t n = try_read(buf, ec);
    if (ec != asio::error::would_block) {
      co_return n;
    }
    co_await wait_readable(ec);
    if (ec) {
      co_return 0;
    }
  }
}

asio::awaitable<void> TlsStream::write_all(std::span<const char> buf, asio::error_code& ec) {
  ec.clear();
  size_t done = 0;
  while (done < buf.size()) {
    ERR_clear_error();
    size_t n = 0;
    const int ret = SSL_write_ex(ssl_.get(), buf.data() + done, buf.size() - done, &n);
    if (ret == 1) {
      done += n;
      continue;
    }
    if (!co_await wait_for_retry(ret, ec)) {
      co_return;
    }
  }
}

asio::awaitable<void> TlsStream::shutdown_write(asio::error_code& ec) {
  ec.clear();
  for (;;) {
    ERR_clear_error();
    const int ret = SSL_shutdown(ssl_.get());
    // 0: our close_notify is out, the peer's not yet seen -- exactly a half-close. 1: both done.
    if (ret >= 0) {
      break;
    }
    if (!co_await wait_for_retry(ret, ec)) {
      co_return;
    }
  }
  // A TCP FIN after close_notify lets peers that only watch the socket see the end too.
  ::shutdown(socket_.native_handle(), SHUT_WR);
}

void TlsStream::close() {
  asio::error_code ignored;
  socket_.close(ignored);
}

bool TlsStream::has_buffered_input() const {
  return !manual_rx_ && SSL_has_pending(ssl_.get()) != 0;
}

std::string TlsStream::protocol() const { return SSL_get_version(ssl_.get()); }

std::string TlsStream::cipher() const {
  const SSL_CIPHER* c = SSL_get_current_cipher(ssl_.get());
  return c != nullptr ? SSL_CIPHER_get_name(c) : "none";
}

}  // namespace spiffe_tunnel::tls
