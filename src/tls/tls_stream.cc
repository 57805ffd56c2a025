#include "spiffe_tunnel/tls/tls_stream.h"

#include <openssl/err.h>
#include <sys/socket.h>

#include <cerrno>
#include <cstring>

#include <asio/redirect_error.hpp>
#include <asio/use_awaitable.hpp>

namespace spiffe_tunnel::tls {

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
  SSL_set_app_data(s->ssl_.get(), s->outcome_.get());
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
      outcome_(std::make_unique<PeerOutcome>()) {}

TlsStream::~TlsStream() = default;

asio::awaitable<bool> TlsStream::wait_for_retry(int ret, asio::error_code& ec, bool* eof) {
  const int err = SSL_get_error(ssl_.get(), ret);
  switch (err) {
    case SSL_ERROR_WANT_READ:
      co_await socket_.async_wait(asio::ip::tcp::socket::wait_read,
                                  asio::redirect_error(asio::use_awaitable, ec));
      co_return !ec;
    case SSL_ERROR_WANT_WRITE:
      co_await socket_.async_wait(asio::ip::tcp::socket::wait_write,
                                  asio::redirect_error(asio::use_awaitable, ec));
      co_return !ec;
    case SSL_ERROR_ZERO_RETURN:
      if (eof != nullptr) {
        *eof = true;
        co_return false;
      }
      error_detail_ = "peer closed the TLS session";
      ec = asio::error::eof;
      co_return false;
    case SSL_ERROR_SYSCALL: {
      const int saved = errno;
      std::string queued = base::drain_openssl_errors();
      error_detail_ = saved != 0 ? std::string("socket error: ") + std::strerror(saved)
                                 : "connection closed by peer" + (queued.empty() ? "" : ": " + queued);
      ec = saved != 0 ? asio::error_code(saved, asio::system_category())
                      : asio::error::connection_reset;
      co_return false;
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
      co_return false;
    }
  }
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
      if (outcome_->rejection == spiffe::Rejection::kNone && !outcome_->verified &&
          error_detail_.find("peer did not return a certificate") != std::string::npos) {
        outcome_->rejection = spiffe::Rejection::kNoCertificate;
        outcome_->detail = "peer sent no client certificate";
      }
      co_return;
    }
  }
  if (!outcome_->verified) {
    // The verify callback must have accepted the peer; a handshake that finishes without it
    // (which OpenSSL should never allow with SSL_VERIFY_PEER) is refused.
    outcome_->rejection = spiffe::Rejection::kNoCertificate;
    outcome_->detail = "handshake completed without a verified peer certificate";
    ec = asio::error::access_denied;
    co_return;
  }
  ktls_tx_ = BIO_get_ktls_send(SSL_get_wbio(ssl_.get())) != 0;
  ktls_rx_ = BIO_get_ktls_recv(SSL_get_rbio(ssl_.get())) != 0;
}

asio::awaitable<std::size_t> TlsStream::read_some(std::span<char> buf, asio::error_code& ec) {
  ec.clear();
  for (;;) {
    ERR_clear_error();
    size_t n = 0;
    const int ret = SSL_read_ex(ssl_.get(), buf.data(), buf.size(), &n);
    if (ret == 1) {
      co_return n;
    }
    bool eof = false;
    if (!co_await wait_for_retry(ret, ec, &eof)) {
      if (eof) {
        ec.clear();
      }
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

std::string TlsStream::protocol() const { return SSL_get_version(ssl_.get()); }

std::string TlsStream::cipher() const {
  const SSL_CIPHER* c = SSL_get_current_cipher(ssl_.get());
  return c != nullptr ? SSL_CIPHER_get_name(c) : "none";
}

}  // namespace spiffe_tunnel::tls
