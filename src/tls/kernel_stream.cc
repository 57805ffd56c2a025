#include "tls/kernel_stream.h"

#include <cerrno>
#include <cstring>
#include <utility>

#include "spiffe_tunnel/tls/ktls.h"
#include "spiffe_tunnel/tls/records.h"
#include "tls/socket_io.h"

namespace spiffe_tunnel::tls {

KernelStream::KernelStream(base::StreamSocket socket, ConnectionInfo info)
    : TlsStream(std::move(socket), std::move(info)) {}

KernelStream::~KernelStream() = default;

std::size_t KernelStream::try_read(std::span<char> buf, asio::error_code& ec) {
  ec.clear();
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
    auto event = classify_record(rec.type, buf.first(rec.size), handshake_);
    if (!event) {
      error_detail_ = event.error().message;
      ec = asio::error::connection_aborted;
      return 0;
    }
    switch (event->kind) {
      case RecordEvent::Kind::kData:
        if (rec.size == 0) {
          continue;
        }
        return rec.size;
      case RecordEvent::Kind::kCloseNotify:
        return 0;  // a clean end of the peer's direction
      case RecordEvent::Kind::kNothing:
        continue;
      case RecordEvent::Kind::kKeyUpdate:
        // Linux gained TLS 1.3 receive rekey only in 6.14, and OpenSSL 3.0 cannot re-key a
        // transmit offload at all.
        error_detail_ =
            "peer sent a TLS 1.3 KeyUpdate; this connection's receive key lives in the kernel, "
            "which cannot be re-keyed here; closing";
        ec = asio::error::connection_aborted;
        return 0;
    }
  }
}

asio::awaitable<void> KernelStream::wait_readable(asio::error_code& ec) {
  ec.clear();
  co_await wait_ready(socket_, SocketWait::kRead, ec);
}

asio::awaitable<void> KernelStream::write_all(std::span<const char> buf, asio::error_code& ec) {
  ec.clear();
  co_await send_all(socket_, buf, ec, error_detail_);  // the kernel makes the records
}

asio::awaitable<void> KernelStream::shutdown_write(asio::error_code& ec) {
  ec.clear();
  co_await send_close_notify(socket_, kCloseNotifyAlert, ec, error_detail_, kAlert);
}

}  // namespace spiffe_tunnel::tls
