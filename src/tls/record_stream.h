#pragma once
// RecordStream: the own TLS 1.3 record layer (RecordCipher), used when the kernel takes neither
// direction. The SSL object is freed after the handshake; records are decrypted straight into the
// caller's buffer when they fit, sealed two per send(), and post-handshake messages are handled
// here (NewSessionTicket dropped, KeyUpdate followed and answered, either reassembled when split
// across records). A fatal error is latched -- no read continues past it -- and answered with the
// alert RFC 8446 names for it (bad_record_mac, record_overflow, unexpected_message, decode_error)
// before the session closes. Made by Handshake.
//
// AEAD usage limits (RFC 8446 §5.5): our key is replaced with a KeyUpdate before it has sealed
// `key_update_records` records (the KeyUpdate being the last of them), and once the peer's key
// has opened that many records without the peer re-keying, one KeyUpdate with update_requested
// asks it to (once per peer key generation). Replaced secrets and keys are wiped (RecordCipher).

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
  // `key_update_records` (at least 2) bounds the records each traffic key protects.
  RecordStream(base::StreamSocket socket, ConnectionInfo info,
               std::unique_ptr<RecordCipher> rx, std::unique_ptr<RecordCipher> tx,
               uint64_t key_update_records = uint64_t{1} << 23);
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
  // Seals our KeyUpdate into `out` and moves to our next key: update_requested when the peer's
  // key is spent, else update_not_requested (an answer, or our own key spent).
  base::Result<std::size_t> seal_key_update(char* out);
  // A KeyUpdate must precede our next record: owed to the peer, asked of it, or our key spent.
  bool key_update_needed() const;
  // After a record was opened: asks for the peer's KeyUpdate once its key is spent.
  void check_peer_key();
  // Sends a needed KeyUpdate at once when no write is under way (a reading-only session must
  // still ask the peer to re-key); what the socket does not take waits in pending_out_.
  void send_key_update_now();
  // Sends pending_out_ (the rest of a KeyUpdate sent from a read) before anything else.
  asio::awaitable<void> flush_pending(asio::error_code& ec);
  void notify(bool sent, bool requested, uint64_t records, std::size_t generation);
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
  const uint64_t key_limit_;         // records per traffic key (key_update_records)
  bool request_update_ = false;      // the peer's key is spent: ask it to re-key
  std::optional<std::size_t> requested_for_;  // the peer generation we asked to re-key
  std::string pending_out_;          // the unsent rest of a KeyUpdate sent from a read
  bool write_closed_ = false;        // our close_notify went out
  PostHandshakeReader handshake_;    // the peer's post-handshake messages, reassembled
  bool writing_ = false;             // write_all() is suspended in the middle of a send
  std::optional<uint8_t> alert_due_; // a fatal alert to send once that send has finished
  bool alert_sent_ = false;          // a fatal alert went out: no further records are sent
};

}  // namespace spiffe_tunnel::tls
