#pragma once
// KernelStream: kernel TLS holds both directions and the SSL object is gone. Data goes out with
// send() (or splice() by the pump), records come in through ktls::read_record() with their type,
// and the closing close_notify goes out as a kernel TLS control record (ktls::send_record()).
// Made by Handshake.
//
// There is no receive-only variant (kernel receives, something else sends): TLS 1.3 receive is
// installed only when OpenSSL already offloaded transmit and holds no buffered record, which is
// exactly when the SSL object can go; TLS 1.2 receive that OpenSSL offloaded without transmit
// stays with OpenSSL (OpenSslStream), which reads through the kernel itself.

#include "spiffe_tunnel/tls/records.h"
#include "spiffe_tunnel/tls/tls_stream.h"

namespace spiffe_tunnel::tls {

class KernelStream final : public TlsStream {
 public:
  // Takes a connection whose socket has kernel TLS installed in both directions and nothing
  // read past the handshake.
  KernelStream(base::StreamSocket socket, ConnectionInfo info);
  ~KernelStream() override;

  // base::ByteStream
  // Non-data records are handled here, where they arrive (RFC 8446 §4.6, §6).
  std::size_t try_read(std::span<char> buf, asio::error_code& ec) override;
  asio::awaitable<void> wait_readable(asio::error_code& ec) override;
  asio::awaitable<void> write_all(std::span<const char> buf, asio::error_code& ec) override;
  asio::awaitable<void> shutdown_write(asio::error_code& ec) override;
  bool kernel_writes() const override { return true; }
  bool kernel_reads() const override { return true; }

 private:
  PostHandshakeReader handshake_;  // the peer's post-handshake messages, reassembled
};

}  // namespace spiffe_tunnel::tls
