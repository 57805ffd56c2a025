#pragma once
// RecordStream: the own TLS 1.3 record layer (RecordCipher), used when the kernel takes neither
// direction. The SSL object is freed after the handshake; records are decrypted straight into the
// caller's buffer when they fit, sealed two per send(), and post-handshake messages are handled
// here (NewSessionTicket dropped, KeyUpdate followed and answered, either reassembled when split
// across records). A fatal error is latched -- no read continues past it -- and answered with the
// alert RFC 8446 names for it (bad_record_mac, record_overflow, unexpected_message, decode_error)
// before the session closes. Made by Handshake.

#include <memory>
#include <optional>

#include "spiffe_tunnel/tls/record_cipher.h"
#include "spiffe_tunnel/tls/records.h"
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
  // Sends the fatal alert `detail` deserves, if any: at once when no write is under way, else
  // after it (an alert between the bytes of a half-sent record would be garbage to the peer).
  void send_fatal_alert(const std::string& detail);
  // Seals and sends alert `alert` without waiting; a full socket buffer drops it.
  void send_alert_now(uint8_t alert);

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
  PostHandshakeReader handshake_;    // the peer's post-handshake messages, reassembled
  bool writing_ = false;             // write_all() is suspended in the middle of a send
  std::optional<uint8_t> alert_due_; // a fatal alert to send once that send has finished
  bool alert_sent_ = false;          // a fatal alert went out: no further records are sent
};

}  // namespace spiffe_tunnel::tls
