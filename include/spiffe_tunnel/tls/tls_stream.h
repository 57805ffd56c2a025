#pragma once
// TlsStream: OpenSSL driven directly on a non-blocking TCP socket (SSL_set_fd), so that OpenSSL
// can hand the record layer to the kernel (kTLS) -- memory BIOs, as asio::ssl uses, never can.
// Readiness comes from asio (socket.async_wait). Owned by one session; used from its thread only.
//
// After the handshake the record layer runs in one of three places, per direction:
//   - the kernel (kTLS), when the kernel and cipher allow it; with both directions there the SSL
//     object is freed (data goes out with send(), alerts as kTLS control records);
//   - this stream's own TLS 1.3 record layer (RecordCipher), when neither direction is offloaded:
//     the SSL object is freed, records are decrypted straight into the caller's buffer and
//     written several per send();
//   - OpenSSL's SSL_read/SSL_write: TLS 1.2 in userspace, and TLS 1.3 with only one direction
//     offloaded.

#include <memory>
#include <string>

#include "spiffe_tunnel/base/byte_stream.h"
#include "spiffe_tunnel/base/openssl.h"
#include "spiffe_tunnel/tls/record_cipher.h"
#include "spiffe_tunnel/tls/tls_context.h"

namespace spiffe_tunnel::tls {

class TlsStream final : public base::ByteStream {
 public:
  // Binds a new SSL object from `context` to `socket`. The context is kept alive by the stream.
  static base::Result<std::unique_ptr<TlsStream>> create(asio::ip::tcp::socket socket,
                                                         std::shared_ptr<const TlsContext> context);
  ~TlsStream() override;

  // Runs the handshake (accept or connect, per the context's role). On failure `ec` is set and
  // outcome()/error_detail() say why.
  asio::awaitable<void> handshake(asio::error_code& ec);

  const PeerOutcome& outcome() const { return state_->outcome; }
  // The last TLS-level error as a sentence, "" if none.
  const std::string& error_detail() const { return error_detail_; }
  std::string protocol() const;  // "TLSv1.3"
  std::string cipher() const;    // "TLS_AES_128_GCM_SHA256"
  // True when this stream runs its own TLS 1.3 record layer (the SSL object is gone).
  bool own_records() const { return rx_ != nullptr; }
  // True while OpenSSL still holds the connection: false with the userspace record layer and
  // when the kernel took both directions.
  bool holds_openssl() const { return ssl_ != nullptr; }
  // Why kernel offload was not used for a direction, "" when it was or was not wanted.
  const std::string& ktls_detail() const { return ktls_detail_; }
  const TlsContext& context() const { return *context_; }

  // base::ByteStream
  asio::awaitable<std::size_t> read_some(std::span<char> buf, asio::error_code& ec) override;
  std::size_t try_read(std::span<char> buf, asio::error_code& ec) override;
  asio::awaitable<void> wait_readable(asio::error_code& ec) override;
  asio::awaitable<void> write_all(std::span<const char> buf, asio::error_code& ec) override;
  asio::awaitable<void> shutdown_write(asio::error_code& ec) override;
  void close() override;
  asio::ip::tcp::socket& socket() override { return socket_; }
  bool kernel_writes() const override { return ktls_tx_; }
  bool kernel_reads() const override { return ktls_rx_; }
  bool has_buffered_input() const override;
  std::string last_error() const override { return error_detail_; }

 private:
  TlsStream(asio::ip::tcp::socket socket, std::shared_ptr<const TlsContext> context);
  // Waits for what OpenSSL asked for after a call returned `ret`. Returns false (with ec set,
  // asio::error::eof for a clean close_notify) on anything else.
  asio::awaitable<bool> wait_for_retry(int ret, asio::error_code& ec);

  asio::ip::tcp::socket socket_;
  std::shared_ptr<const TlsContext> context_;
  base::SslPtr ssl_;
  // Offloads what OpenSSL left in userspace; runs once after the handshake.
  void enable_kernel_offload();
  // try_read() on a socket whose receive side the kernel decrypts (manual TLS 1.3 offload).
  std::size_t try_read_kernel(std::span<char> buf, asio::error_code& ec);
  // Classifies a failed OpenSSL call outside a coroutine: true when it only has to wait (for
  // reading, or for writing when `want_write_` is set); false with ec set (eof for close_notify).
  bool classify(int ret, asio::error_code& ec);

  // The userspace TLS 1.3 record layer (see the file comment).
  bool start_own_records();
  // With both directions in the kernel and nothing left in OpenSSL's buffers: reads go through
  // read_record() from now on and the SSL object can go. False leaves OpenSSL in charge.
  bool hand_over_to_kernel();

  std::size_t try_read_records(std::span<char> buf, asio::error_code& ec);
  // Handles a decrypted handshake record (NewSessionTicket, KeyUpdate); false on a fatal error.
  bool post_handshake(const char* msg, std::size_t size, asio::error_code& ec);
  asio::awaitable<void> write_records(std::span<const char> buf, asio::error_code& ec);
  // Sends all of data, waiting for socket space. With kernel_record_type, the bytes go out as a
  // kTLS record of that type (a control record such as an alert) instead of application data.
  asio::awaitable<void> send_all(const char* data, std::size_t size, asio::error_code& ec,
                                 int kernel_record_type = -1);
  bool fail(std::string detail, asio::error_code& ec, asio::error_code code);
  // try_read() can make progress without the socket: plaintext, a whole record, an end or error.
  bool record_ready() const;
  void release_input();

  std::unique_ptr<RecordCipher> rx_;
  std::unique_ptr<RecordCipher> tx_;
  std::unique_ptr<char[]> in_;      // received, not yet consumed: [in_begin_, in_end_)
  std::size_t in_begin_ = 0;
  std::size_t in_end_ = 0;
  std::size_t plain_begin_ = 0;     // decrypted data the caller had no room for, inside in_
  std::size_t plain_end_ = 0;
  asio::error_code deferred_error_; // reported by the next read (data came first)
  bool peer_closed_ = false;        // close_notify received
  bool key_update_due_ = false;     // the peer asked for our KeyUpdate before our next record
  const char* protocol_ = nullptr;  // static strings of libssl, kept when the SSL object goes
  const char* cipher_ = nullptr;

  std::unique_ptr<ConnectionState> state_;
  bool manual_rx_ = false;  // we installed TLS 1.3 RX: OpenSSL must not read any more
  bool want_write_ = false; // the last read needs the socket writable (TLS post-handshake)
  std::string error_detail_;
  std::string ktls_detail_;
  bool ktls_tx_ = false;
  bool ktls_rx_ = false;
};

}  // namespace spiffe_tunnel::tls
