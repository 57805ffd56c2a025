#include "tls/record_stream.h"

#include <sys/socket.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <utility>

#include "spiffe_tunnel/tls/records.h"
#include "tls/socket_io.h"

namespace spiffe_tunnel::tls {

namespace {
// Received bytes are read in large chunks (several records per recv(), as OpenSSL's read-ahead
// buffer); the buffer also holds one whole maximum record that straddles the end of a chunk.
constexpr std::size_t kReadChunk = 64 * 1024;
constexpr std::size_t kInputBuffer = kReadChunk + kRecordHeader + kMaxCiphertext;
// Records sealed per send(). Two (32 KiB) measured best: one send per record costs more syscalls
// on loopback, and four (64 KiB) lost 15-20 % on a 10 Gbit/s shaped veth, where each larger push
// drags more of the receiver's softirq work into the sender's time slice.
constexpr std::size_t kRecordsPerSend = 2;
// A KeyUpdate message (type, 24-bit length, request_update) as a record.
constexpr std::size_t kKeyUpdateRecord = 5 + kRecordOverhead;
// Each record of a send may be preceded by a KeyUpdate (the smallest key_update_records is 2).
constexpr std::size_t kOutputBuffer =
    kRecordsPerSend * (kMaxPlaintext + kRecordOverhead + kKeyUpdateRecord);
}  // namespace

RecordStream::RecordStream(base::StreamSocket socket, ConnectionInfo info,
                           std::unique_ptr<RecordCipher> rx, std::unique_ptr<RecordCipher> tx,
                           uint64_t key_update_records)
    : TlsStream(std::move(socket), std::move(info)),
      rx_(std::move(rx)),
      tx_(std::move(tx)),
      key_limit_(std::max<uint64_t>(key_update_records, 2)) {}

RecordStream::~RecordStream() = default;

// ---- Reading ---------------------------------------------------------------------------------

std::size_t RecordStream::try_read(std::span<char> buf, asio::error_code& ec) {
  ec.clear();
  if (plain_begin_ < plain_end_) {
    return take_plaintext(buf);
  }
  if (deferred_error_ || peer_closed_) {
    ec = deferred_error_;
    return 0;
  }
  Read r{buf};
  while (r.more) {
    switch (next_record()) {
      case Next::kWhole:
        open_record(r);
        break;
      case Next::kOversized:
        stop(r, "record_overflow: peer sent a record of " + std::to_string(next_body()) + " bytes",
             asio::error::connection_aborted);
        break;
      case Next::kPartial:
        if (r.total > 0) {
          r.more = false;  // deliver what we have; more is read on the next call
        } else {
          receive(r);
        }
        break;
    }
  }
  // A fatal error after some data: the data goes out now, the error with the next read. Either
  // way the error is latched: every later read reports it and reads nothing more.
  if (r.error && r.error != asio::error::would_block) {
    deferred_error_ = r.error;
  } else if (key_update_needed()) {
    send_key_update_now();
  }
  if (r.total == 0) {
    ec = r.error;
  }
  return r.total;
}

std::size_t RecordStream::next_body() const {
  const auto* h = reinterpret_cast<const unsigned char*>(in_.get() + in_begin_);
  return static_cast<std::size_t>(h[3]) << 8 | h[4];
}

RecordStream::Next RecordStream::next_record() const {
  const std::size_t avail = in_end_ - in_begin_;
  if (avail < kRecordHeader) {
    return Next::kPartial;
  }
  const std::size_t body = next_body();
  if (body > kMaxCiphertext) {
    return Next::kOversized;
  }
  return avail >= kRecordHeader + body ? Next::kWhole : Next::kPartial;
}

void RecordStream::open_record(Read& r) {
  char* record = in_.get() + in_begin_;
  const std::size_t body = next_body();
  // Decrypt straight into the caller's buffer when the record fits, else in place.
  const std::size_t room = body > kAeadTag ? body - kAeadTag : 0;
  const bool direct = r.buf.size() - r.total >= room;
  char* out = direct ? r.buf.data() + r.total : record + kRecordHeader;
  auto opened = rx_->open({record, kRecordHeader + body}, out);
  if (!opened) {
    stop(r, opened.error().message, asio::error::connection_aborted);
    return;
  }
  in_begin_ += kRecordHeader + body;
  check_peer_key();
  auto event = classify_record(opened->type, {out, opened->size}, handshake_);
  if (!event) {
    stop(r, event.error().message, asio::error::connection_aborted);
    return;
  }
  switch (event->kind) {
    case RecordEvent::Kind::kData:
      deliver(r, out, opened->size, direct);
      return;
    case RecordEvent::Kind::kCloseNotify:
      peer_closed_ = true;  // a clean end of the peer's direction
      release_input();
      r.more = false;
      return;
    case RecordEvent::Kind::kNothing:
      return;
    case RecordEvent::Kind::kKeyUpdate:
      follow_key_update(r, event->update_requested);
      return;
  }
}

void RecordStream::deliver(Read& r, char* plaintext, std::size_t size, bool in_callers_buffer) {
  if (in_callers_buffer) {
    r.total += size;
    return;
  }
  if (size == 0) {
    return;
  }
  plain_begin_ = static_cast<std::size_t>(plaintext - in_.get());
  plain_end_ = plain_begin_ + size;
  r.total += take_plaintext(r.buf.subspan(r.total));
  r.more = false;
}

void RecordStream::follow_key_update(Read& r, bool update_requested) {
  const uint64_t records = rx_->sequence();
  if (auto st = rx_->next_generation(); !st) {
    stop(r, st.error().message, asio::error::connection_aborted);
    return;
  }
  request_update_ = false;  // the peer has a fresh key
  notify(false, update_requested, records, rx_->generation());
  if (update_requested) {
    key_update_due_ = true;  // answered before our next record
  }
}

void RecordStream::receive(Read& r) {
  const std::size_t avail = in_end_ - in_begin_;
  if (!in_) {
    in_ = std::make_unique_for_overwrite<char[]>(kInputBuffer);
  }
  if (in_begin_ > 0) {  // keep the partial record at the front
    std::memmove(in_.get(), in_.get() + in_begin_, avail);
    in_begin_ = 0;
    in_end_ = avail;
  }
  const ssize_t n =
      ::recv(socket_.native_handle(), in_.get() + in_end_, kInputBuffer - in_end_, MSG_DONTWAIT);
  if (n > 0) {
    in_end_ += static_cast<std::size_t>(n);
    return;
  }
  if (n == 0) {
    stop(r,
         avail > 0 ? "peer closed the connection in the middle of a record"
                   : "peer closed the connection without close_notify",
         asio::error::connection_reset);
    return;
  }
  const int e = errno;
  if (e == EINTR) {
    return;
  }
  if (e == EAGAIN || e == EWOULDBLOCK) {
    if (avail == 0) {
      release_input();  // an idle session holds no buffer
    }
    r.error = asio::error::would_block;
    r.more = false;
    return;
  }
  stop(r, std::string("socket error: ") + std::strerror(e),
       asio::error_code(e, asio::system_category()));
}

void RecordStream::stop(Read& r, std::string detail, asio::error_code code) {
  send_fatal_alert(detail);
  fail(std::move(detail), r.error, code);
  r.more = false;
}

void RecordStream::send_fatal_alert(const std::string& detail) {
  const std::optional<uint8_t> alert = alert_for(detail);
  if (!alert || alert_sent_ || alert_due_) {
    return;
  }
  if (writing_) {
    alert_due_ = alert;
    return;
  }
  send_alert_now(*alert);
}

void RecordStream::send_alert_now(uint8_t alert) {
  alert_sent_ = true;
  if (!pending_out_.empty()) {
    return;  // not in the middle of a record
  }
  const char body[] = {static_cast<char>(kAlertFatal), static_cast<char>(alert)};
  char record[sizeof(body) + kRecordOverhead];
  auto n = tx_->seal(kAlert, body, record);
  if (n) {
    // Best effort, as every TLS stack sends its last alert: the connection closes next anyway.
    (void)::send(socket_.native_handle(), record, *n, MSG_DONTWAIT | MSG_NOSIGNAL);
  }
}

void RecordStream::fail(std::string detail, asio::error_code& ec, asio::error_code code) {
  error_detail_ = std::move(detail);
  ec = code;
  release_input();
}

std::size_t RecordStream::take_plaintext(std::span<char> buf) {
  const std::size_t n = std::min(buf.size(), plain_end_ - plain_begin_);
  std::memcpy(buf.data(), in_.get() + plain_begin_, n);
  plain_begin_ += n;
  return n;
}

bool RecordStream::record_ready() const {
  return plain_begin_ < plain_end_ || peer_closed_ || deferred_error_ ||
         next_record() != Next::kPartial;  // a whole record, or an error
}

asio::awaitable<void> RecordStream::wait_readable(asio::error_code& ec) {
  ec.clear();
  // Only what try_read() can use without the socket counts: a partial record waits for its rest
  // (returning at once for one would spin until it arrives).
  if (record_ready()) {
    co_return;
  }
  co_await wait_ready(socket_, SocketWait::kRead, ec);
}

bool RecordStream::has_buffered_input() const {
  return plain_begin_ < plain_end_ || in_begin_ < in_end_;
}

void RecordStream::release_input() {
  in_.reset();
  in_begin_ = in_end_ = plain_begin_ = plain_end_ = 0;
}

void RecordStream::close() {
  TlsStream::close();
  release_input();
}

// ---- Writing ---------------------------------------------------------------------------------

void RecordStream::notify(bool sent, bool requested, uint64_t records, std::size_t generation) {
  if (key_update_observer_) {
    key_update_observer_(KeyUpdateEvent{sent, requested, records, generation});
  }
}

bool RecordStream::key_update_needed() const {
  return key_update_due_ || request_update_ || tx_->sequence() + 1 >= key_limit_;
}

void RecordStream::check_peer_key() {
  if (rx_->sequence() >= key_limit_ && requested_for_ != rx_->generation()) {
    requested_for_ = rx_->generation();  // asked once per peer key
    request_update_ = true;
  }
}

base::Result<std::size_t> RecordStream::seal_key_update(char* out) {
  const bool requested = request_update_;
  const char message[] = {kKeyUpdate, 0, 0, 1, static_cast<char>(requested ? 1 : 0)};
  const uint64_t records = tx_->sequence() + 1;  // the KeyUpdate is the old key's last record
  auto n = tx_->seal(kHandshake, message, out);
  if (!n) {
    return n;
  }
  if (auto st = tx_->next_generation(); !st) {
    return st.error();
  }
  key_update_due_ = false;  // one KeyUpdate answers the peer's request as well
  request_update_ = false;
  notify(true, requested, records, tx_->generation());
  return n;
}

void RecordStream::send_key_update_now() {
  if (writing_ || alert_sent_ || write_closed_ || !pending_out_.empty() || !socket_.is_open()) {
    return;  // the write under way (or the next) sends it; none after our close_notify
  }
  char record[kKeyUpdateRecord];
  auto n = seal_key_update(record);
  if (!n) {
    return;  // the next write fails with the same error
  }
  const ssize_t sent =
      ::send(socket_.native_handle(), record, *n, MSG_DONTWAIT | MSG_NOSIGNAL);
  const std::size_t done = sent > 0 ? static_cast<std::size_t>(sent) : 0;
  // A full socket buffer: the rest goes first with the next write (the peer is not reading).
  pending_out_.assign(record + done, *n - done);
}

asio::awaitable<void> RecordStream::flush_pending(asio::error_code& ec) {
  if (pending_out_.empty()) {
    co_return;
  }
  const std::string out = std::exchange(pending_out_, {});
  writing_ = true;
  co_await send_all(socket_, out, ec, error_detail_);
  writing_ = false;
}

asio::awaitable<void> RecordStream::write_all(std::span<const char> buf, asio::error_code& ec) {
  ec.clear();
  if (alert_sent_) {
    ec = asio::error::connection_aborted;  // the connection ended with our fatal alert
    co_return;
  }
  co_await flush_pending(ec);
  if (ec) {
    co_return;
  }
  std::size_t done = 0;
  std::unique_ptr<char[]> out;
  while (done < buf.size()) {
    if (!out) {
      out = std::make_unique_for_overwrite<char[]>(kOutputBuffer);
    }
    std::size_t fill = 0;
    while (done < buf.size() &&
           fill + kKeyUpdateRecord + kMaxPlaintext + kRecordOverhead <= kOutputBuffer) {
      if (key_update_needed()) {
        auto n = seal_key_update(out.get() + fill);
        if (!n) {
          fail(n.error().message, ec, asio::error::connection_aborted);
          co_return;
        }
        fill += *n;
      }
      const std::size_t chunk = std::min(kMaxPlaintext, buf.size() - done);
      auto n = tx_->seal(kApplicationData, buf.subspan(done, chunk), out.get() + fill);
      if (!n) {
        fail(n.error().message, ec, asio::error::connection_aborted);
        co_return;
      }
      fill += *n;
      done += chunk;
    }
    writing_ = true;
    co_await send_all(socket_, {out.get(), fill}, ec, error_detail_);
    writing_ = false;
    if (alert_due_) {
      send_alert_now(*std::exchange(alert_due_, std::nullopt));
      ec = asio::error::connection_aborted;
    }
    if (ec) {
      co_return;
    }
  }
}

asio::awaitable<void> RecordStream::shutdown_write(asio::error_code& ec) {
  ec.clear();
  if (alert_sent_ || writing_) {
    ec = asio::error::connection_aborted;  // no close_notify after a fatal alert
    co_return;
  }
  co_await flush_pending(ec);
  if (ec) {
    co_return;
  }
  char record[sizeof(kCloseNotifyAlert) + kRecordOverhead];
  write_closed_ = true;  // no record of ours follows close_notify, not even a KeyUpdate
  auto n = tx_->seal(kAlert, kCloseNotifyAlert, record);
  if (!n) {
    fail(n.error().message, ec, asio::error::connection_aborted);
    co_return;
  }
  co_await send_close_notify(socket_, {record, *n}, ec, error_detail_);
}

}  // namespace spiffe_tunnel::tls
