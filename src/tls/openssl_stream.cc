#include "tls/openssl_stream.h"

#include <openssl/err.h>
#include <sys/socket.h>

#include <utility>

namespace spiffe_tunnel::tls {

namespace {
// OpenSSL's read buffer with read-ahead: room for several 16 KiB records per read().
constexpr std::size_t kReadAheadBuffer = 64 * 1024;
}  // namespace

OpenSslStream::OpenSslStream(base::StreamSocket socket, ConnectionInfo info, base::SslPtr ssl,
                             std::unique_ptr<ConnectionState> state, bool kernel_writes,
                             bool kernel_reads)
    : TlsStream(std::move(socket), std::move(info)),
      state_(std::move(state)),
      ssl_(std::move(ssl)),
      kernel_writes_(kernel_writes),
      kernel_reads_(kernel_reads) {
  if (!kernel_reads_) {
    // Userspace receive: let OpenSSL read several records per read() instead of a 5-byte header
    // and then the body. Only now, after the handshake: buffered records would keep the kernel
    // from taking over receive.
    SSL_set_default_read_buffer_len(ssl_.get(), kReadAheadBuffer);
    SSL_set_read_ahead(ssl_.get(), 1);
  }
  // The handshake leaves OpenSSL's record buffers allocated; an idle session should not hold them.
  SSL_free_buffers(ssl_.get());
}

OpenSslStream::~OpenSslStream() = default;

bool OpenSslStream::classify(int ret, asio::error_code& ec) {
  const SocketWait wait = classify_ssl_result(ssl_.get(), ret, ec, error_detail_);
  want_write_ = wait == SocketWait::kWrite;
  return wait != SocketWait::kNone;
}

asio::awaitable<bool> OpenSslStream::wait_for_retry(int ret, asio::error_code& ec) {
  if (!classify(ret, ec)) {
    co_return false;
  }
  co_await wait_ready(socket_, want_write_ ? SocketWait::kWrite : SocketWait::kRead, ec);
  co_return !ec;
}

std::size_t OpenSslStream::try_read(std::span<char> buf, asio::error_code& ec) {
  ec.clear();
  ERR_clear_error();
  std::size_t n = 0;
  const int ret = SSL_read_ex(ssl_.get(), buf.data(), buf.size(), &n);
  if (state_->peer_key_update && kernel_writes_) {
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

asio::awaitable<void> OpenSslStream::wait_readable(asio::error_code& ec) {
  ec.clear();
  // Only what try_read() can use without the socket counts: a partial record waits for its rest
  // (returning at once for one would spin until it arrives).
  if (SSL_pending(ssl_.get()) > 0) {
    co_return;
  }
  co_await wait_ready(socket_, want_write_ ? SocketWait::kWrite : SocketWait::kRead, ec);
}

asio::awaitable<void> OpenSslStream::write_all(std::span<const char> buf, asio::error_code& ec) {
  ec.clear();
  std::size_t done = 0;
  while (done < buf.size()) {
    ERR_clear_error();
    std::size_t n = 0;
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

asio::awaitable<void> OpenSslStream::shutdown_write(asio::error_code& ec) {
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

bool OpenSslStream::has_buffered_input() const { return SSL_has_pending(ssl_.get()) != 0; }

}  // namespace spiffe_tunnel::tls
