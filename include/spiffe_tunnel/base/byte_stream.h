#pragma once
// ByteStream: one end of a proxied connection as the pump sees it -- a plain socket (TCP or unix
// stream) or a TLS stream over one. Operations are asio coroutines run on the session's io_context; a ByteStream
// is owned by exactly one session and used from its thread only. Errors are returned as
// error_codes, never thrown.

#include <asio/awaitable.hpp>
#include <asio/error_code.hpp>
#include <asio/generic/stream_protocol.hpp>
#include <asio/ip/tcp.hpp>

#include <cstddef>
#include <span>
#include <string>

namespace spiffe_tunnel::base {

// A connected stream socket of any family: TCP (v4, v6) or unix. Operations are the same syscalls
// as on asio::ip::tcp::socket, which converts to it implicitly (a move, no copy of state).
using StreamSocket = asio::generic::stream_protocol::socket;

class ByteStream {
 public:
  virtual ~ByteStream() = default;

  // Reads at least one byte into `buf`. Returns 0 bytes with no error at end of stream (TCP FIN or
  // TLS close_notify).
  virtual asio::awaitable<std::size_t> read_some(std::span<char> buf, asio::error_code& ec) = 0;

  // Reads what is available now without waiting: bytes read, or 0 with `ec` =
  // asio::error::would_block when nothing is ready, or 0 with no error at end of stream.
  virtual std::size_t try_read(std::span<char> buf, asio::error_code& ec) = 0;

  // Waits until try_read() can make progress (data, end of stream or an error).
  virtual asio::awaitable<void> wait_readable(asio::error_code& ec) = 0;

  // Writes all of `buf`.
  virtual asio::awaitable<void> write_all(std::span<const char> buf, asio::error_code& ec) = 0;

  // Ends our direction of the stream (TLS close_notify and/or TCP FIN); reading continues.
  virtual asio::awaitable<void> shutdown_write(asio::error_code& ec) = 0;

  // Aborts both directions now; pending operations complete with an error. Safe to call twice.
  virtual void close() = 0;

  // The socket underneath, for splice() and diagnostics.
  virtual StreamSocket& socket() = 0;

  // True when the kernel handles this stream's record layer in that direction (plain TCP, or TLS
  // offloaded to kTLS), so bytes may be spliced straight into / out of the socket.
  virtual bool kernel_writes() const = 0;
  virtual bool kernel_reads() const = 0;
  // True when bytes already sit in a userspace buffer of the stream (e.g. OpenSSL's), which must
  // be read with read_some() before splicing from the socket.
  virtual bool has_buffered_input() const { return false; }
  // The last protocol-level error as a sentence (e.g. "peer sent alert bad_record_mac"), or "".
  virtual std::string last_error() const { return {}; }
};

// A plain socket, TCP or unix stream (the name predates unix sockets).
class TcpStream final : public ByteStream {
 public:
  // Puts the socket in non-blocking mode: splice() honours the descriptor's O_NONBLOCK, not only
  // SPLICE_F_NONBLOCK, and a blocking splice would stall the whole io_context.
  explicit TcpStream(StreamSocket socket);

  asio::awaitable<std::size_t> read_some(std::span<char> buf, asio::error_code& ec) override;
  std::size_t try_read(std::span<char> buf, asio::error_code& ec) override;
  asio::awaitable<void> wait_readable(asio::error_code& ec) override;
  asio::awaitable<void> write_all(std::span<const char> buf, asio::error_code& ec) override;
  asio::awaitable<void> shutdown_write(asio::error_code& ec) override;
  void close() override;
  StreamSocket& socket() override { return socket_; }
  bool kernel_writes() const override { return true; }
  bool kernel_reads() const override { return true; }

 private:
  StreamSocket socket_;
};

}  // namespace spiffe_tunnel::base
