#include "tls/socket_io.h"

#include <openssl/err.h>
#include <sys/socket.h>

#include <cerrno>
#include <cstring>

#include <asio/redirect_error.hpp>
#include <asio/use_awaitable.hpp>

#include "spiffe_tunnel/base/openssl.h"
#include "spiffe_tunnel/tls/ktls.h"

namespace spiffe_tunnel::tls {

SocketWait classify_ssl_result(SSL* ssl, int ret, asio::error_code& ec, std::string& detail) {
  switch (SSL_get_error(ssl, ret)) {
    case SSL_ERROR_WANT_READ:
      return SocketWait::kRead;
    case SSL_ERROR_WANT_WRITE:
      return SocketWait::kWrite;
    case SSL_ERROR_ZERO_RETURN:
      detail = "peer closed the TLS session";
      ec = asio::error::eof;
      return SocketWait::kNone;
    case SSL_ERROR_SYSCALL: {
      const int saved = errno;
      std::string queued = base::drain_openssl_errors();
      detail = saved != 0 ? std::string("socket error: ") + std::strerror(saved)
                          : "connection closed by peer" + (queued.empty() ? "" : ": " + queued);
      ec = saved != 0 ? asio::error_code(saved, asio::system_category())
                      : asio::error::connection_reset;
      return SocketWait::kNone;
    }
    default: {
      const unsigned long code = ERR_peek_last_error();
      std::string queued = base::drain_openssl_errors();
      if (ERR_GET_REASON(code) == SSL_R_UNEXPECTED_EOF_WHILE_READING) {
        detail = "peer closed the connection without close_notify";
        ec = asio::error::connection_reset;
      } else {
        detail = queued.empty() ? "TLS error" : queued;
        ec = asio::error::connection_aborted;
      }
      return SocketWait::kNone;
    }
  }
}

asio::awaitable<void> wait_ready(base::StreamSocket& socket, SocketWait wait,
                                 asio::error_code& ec) {
  co_await socket.async_wait(
      wait == SocketWait::kWrite ? base::StreamSocket::wait_write
                              : base::StreamSocket::wait_read,
      asio::redirect_error(asio::use_awaitable, ec));
}

asio::awaitable<void> send_all(base::StreamSocket& socket, std::span<const char> data,
                               asio::error_code& ec, std::string& detail,
                               std::optional<uint8_t> kernel_record_type) {
  const int fd = socket.native_handle();
  std::size_t sent = 0;
  while (sent < data.size()) {
    const std::span<const char> rest = data.subspan(sent);
    const ssize_t n = kernel_record_type
                          ? ktls::send_record(fd, *kernel_record_type, rest)
                          : ::send(fd, rest.data(), rest.size(), MSG_NOSIGNAL | MSG_DONTWAIT);
    if (n >= 0) {
      sent += static_cast<std::size_t>(n);
      continue;
    }
    const int e = errno;
    if (e == EINTR) {
      continue;
    }
    if (e != EAGAIN && e != EWOULDBLOCK) {
      detail = std::string("socket error: ") + std::strerror(e);
      ec = asio::error_code(e, asio::system_category());
      co_return;
    }
    co_await socket.async_wait(base::StreamSocket::wait_write,
                               asio::redirect_error(asio::use_awaitable, ec));
    if (ec) {
      co_return;
    }
  }
}

asio::awaitable<void> send_close_notify(base::StreamSocket& socket,
                                        std::span<const char> close_notify, asio::error_code& ec,
                                        std::string& detail,
                                        std::optional<uint8_t> kernel_record_type) {
  co_await send_all(socket, close_notify, ec, detail, kernel_record_type);
  if (!ec) {
    ::shutdown(socket.native_handle(), SHUT_WR);
  }
}

}  // namespace spiffe_tunnel::tls
