#pragma once
// OpenSslStream: the record layer stays in the SSL object; reads and writes are SSL_read_ex and
// SSL_write_ex on the non-blocking socket, driven from asio readiness. Used for TLS 1.2 in
// userspace, for whatever OpenSSL offloaded to the kernel itself (it then reads and writes through
// the kTLS socket), and for TLS 1.3 with only one direction in the kernel. Made by Handshake.

#include <memory>

#include "spiffe_tunnel/base/openssl.h"
#include "spiffe_tunnel/tls/tls_stream.h"
#include "tls/socket_io.h"

namespace spiffe_tunnel::tls {

class OpenSslStream final : public TlsStream {
 public:
  // Takes the connection after a completed handshake. `state` is the SSL object's app data (its
  // callbacks keep writing to it); `kernel_writes`/`kernel_reads` say which directions OpenSSL
  // offloaded. Turns on read-ahead when receive stays in userspace and frees the buffers the
  // handshake left.
  OpenSslStream(base::StreamSocket socket, ConnectionInfo info, base::SslPtr ssl,
                std::unique_ptr<ConnectionState> state, bool kernel_writes, bool kernel_reads);
  ~OpenSslStream() override;

  // base::ByteStream
  std::size_t try_read(std::span<char> buf, asio::error_code& ec) override;
  asio::awaitable<void> wait_readable(asio::error_code& ec) override;
  asio::awaitable<void> write_all(std::span<const char> buf, asio::error_code& ec) override;
  asio::awaitable<void> shutdown_write(asio::error_code& ec) override;
  bool kernel_writes() const override { return kernel_writes_; }
  bool kernel_reads() const override { return kernel_reads_; }
  bool has_buffered_input() const override;

 private:
  // Classifies a failed OpenSSL call: true when it only has to wait (for reading, or for writing
  // when want_write_ is set); false with ec set (eof for close_notify) and error_detail_ saying
  // why.
  bool classify(int ret, asio::error_code& ec);
  // Waits for what OpenSSL asked for after a call returned `ret`. Returns false (with ec set,
  // asio::error::eof for a clean close_notify) on anything else.
  asio::awaitable<bool> wait_for_retry(int ret, asio::error_code& ec);

  std::unique_ptr<ConnectionState> state_;  // SSL app data: declared first, freed after ssl_
  base::SslPtr ssl_;
  const bool kernel_writes_;
  const bool kernel_reads_;
  // The last OpenSSL call, read or write, needs the socket writable (a read may have to send a
  // TLS post-handshake message first).
  bool want_write_ = false;
};

}  // namespace spiffe_tunnel::tls
