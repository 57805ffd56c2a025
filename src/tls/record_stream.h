#pragma once
// RecordStream: the own TLS 1.3 record layer (RecordCipher), used when the kernel takes neither
// direction. The SSL object is freed after the handshake; records are decrypted straight into the
// caller's buffer when they fit, sealed two per send(), and post-handshake messages are handled
// here (NewSessionTicket dropped, KeyUpdate followed and answered). Made by Handshake.

#include <memory>

#include "spiffe_tunnel/tls/record_cipher.h"
#include "spiffe_tunnel/tls/tls_stream.h"

namespace spiffe_tunnel::tls {

class RecordStream final : public TlsStream {
 public:
  // Takes a TLS 1.3 connection at record sequence 0 in both directions: `rx` opens the peer's
  // records, `tx` seals ours.
  RecordStream(base::StreamSocket socket, ConnectionInfo info,
               std::unique_ptr<RecordCipher> rx, std::unique_ptr<RecordCipher> tx);
  ~RecordStream() override;

  // base::ByteStream
  std::size_t try_read(std::span<char> buf, asio::error_code& ec) override;
  asio::awaitable<void> wait_readable(asio::error_code& ec) override;
  asio::awaitable<void> write_all(std::span<const char> buf, asio::error_code& ec) override;
  asio::awaitable<void> shutdown_write(asio::error_code& ec) override;
  void close() override;
  bool kernel_writes() const override { return false; }
  bool kernel_reads() const override { return false; }
  bool has_buffered_input() const override;

 private:
  // One try_read() call: what it placed in the caller's buffer, and how it ends.
  struct Read {
    std::span<char> buf;
    std::size_t total = 0;       // bytes placed in buf
    bool more = true;            // keep reading records
    asio::error_code error;      // would_block, or a fatal error (delivered after the data)
  };
  enum class Next { kPartial, kWhole, kOversized };

  // What sits at the front of the input buffer.
  Next next_record() const;
  std::size_t next_body() const;
  // Opens the whole record at the front of the input buffer and acts on it.
  void open_record(Read& r);
  void deliver(Read& r, char* plaintext, std::size_t size, bool in_callers_buffer);
  void follow_key_update(Read& r, bool update_requested);
  // Reads more of the socket into the input buffer (only when nothing was delivered yet).
  void receive(Read& r);
  // Ends the read with a fatal error: `detail` for last_error(), the input buffer released.
  void stop(Read& r, std::string detail, asio::error_code code);
  // A fatal error: sets `ec` to `code` and last_error() to `detail`, releases the input buffer.
  void fail(std::string detail, asio::error_code& ec, asio::error_code code);
  std::size_t take_plaintext(std::span<char> buf);
  // try_read() can make progress without the socket: plaintext, a whole record, an end or error.
  bool record_ready() const;
  // Seals our KeyUpdate (update_not_requested) into `out` and moves to our next key.
  base::Result<std::size_t> seal_key_update(char* out);
  void release_input();

  std::unique_ptr<RecordCipher> rx_;
  std::unique_ptr<RecordCipher> tx_;
  std::unique_ptr<char[]> in_;       // received, not yet consumed: [in_begin_, in_end_)
  std::size_t in_begin_ = 0;
  std::size_t in_end_ = 0;
  std::size_t plain_begin_ = 0;      // decrypted data the caller had no room for, inside in_
  std::size_t plain_end_ = 0;
  asio::error_code deferred_error_;  // reported by the next read (data came first)
  bool peer_closed_ = false;         // close_notify received
  bool key_update_due_ = false;      // the peer asked for our KeyUpdate before our next record
};

}  // namespace spiffe_tunnel::tls
