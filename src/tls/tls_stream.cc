#include "spiffe_tunnel/tls/tls_stream.h"

#include "spiffe_tunnel/tls/ktls.h"

#include <openssl/err.h>
#include <sys/socket.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <utility>

#include <asio/redirect_error.hpp>
#include <asio/use_awaitable.hpp>

namespace spiffe_tunnel::tls {

namespace {
// OpenSSL's read buffer with read-ahead: room for several 16 KiB records per read().
constexpr size_t kReadAheadBuffer = 64 * 1024;
}  // namespace

base::Result<std::unique_ptr<TlsStream>> TlsStream::create(
    asio::ip::tcp::socket socket, std::shared_ptr<const TlsContext> context) {
  std::unique_ptr<TlsStream> s(new TlsStream(std::move(socket), std::move(context)));
  if (!s->ssl_) {
    return base::make_error("SSL_new failed: " + base::drain_openssl_errors());
  }
  asio::error_code ec;
  s->socket_.non_blocking(true, ec);
  if (ec || SSL_set_fd(s->ssl_.get(), s->socket_.native_handle()) != 1) {
    return base::make_error("cannot bind TLS to socket: " + base::drain_openssl_errors());
  }
  SSL_set_app_data(s->ssl_.get(), s->state_.get());
  const TlsOptions& opts = s->context_->options();
  if (opts.role == Role::kServer) {
    SSL_set_accept_state(s->ssl_.get());
  } else {
    SSL_set_connect_state(s->ssl_.get());
    if (!opts.server_name.empty()) {
      SSL_set_tlsext_host_name(s->ssl_.get(), opts.server_name.c_str());
    }
  }
  return s;
}

TlsStream::TlsStream(asio::ip::tcp::socket socket, std::shared_ptr<const TlsContext> context)
    : socket_(std::move(socket)),
      context_(std::move(context)),
      ssl_(SSL_new(context_->ssl_ctx())),
      state_(std::make_unique<ConnectionState>()) {}

TlsStream::~TlsStream() = default;

bool TlsStream::classify(int ret, asio::error_code& ec) {
  want_write_ = false;
  const int err = SSL_get_error(ssl_.get(), ret);
  switch (err) {
    case SSL_ERROR_WANT_READ:
      return true;
    case SSL_ERROR_WANT_WRITE:
      want_write_ = true;
      return true;
    case SSL_ERROR_ZERO_RETURN:
      error_detail_ = "peer closed the TLS session";
      ec = asio::error::eof;
      return false;
    case SSL_ERROR_SYSCALL: {
      const int saved = errno;
      std::string queued = base::drain_openssl_errors();
      error_detail_ = saved != 0 ? std::string("socket error: ") + std::strerror(saved)
                                 : "connection closed by peer" + (queued.empty() ? "" : ": " + queued);
      ec = saved != 0 ? asio::error_code(saved, asio::system_category())
                      : asio::error::connection_reset;
      return false;
    }
    default: {
      const unsigned long code = ERR_peek_last_error();
      std::string queued = base::drain_openssl_errors();
      if (ERR_GET_REASON(code) == SSL_R_UNEXPECTED_EOF_WHILE_READING) {
        error_detail_ = "peer closed the connection without close_notify";
        ec = asio::error::connection_reset;
      } else {
        error_detail_ = queued.empty() ? "TLS error" : queued;
        ec = asio::error::connection_aborted;
      }
      return false;
    }
  }
}

asio::awaitable<bool> TlsStream::wait_for_retry(int ret, asio::error_code& ec) {
  if (!classify(ret, ec)) {
    co_return false;
  }
  co_await socket_.async_wait(
      want_write_ ? asio::ip::tcp::socket::wait_write : asio::ip::tcp::socket::wait_read,
      asio::redirect_error(asio::use_awaitable, ec));
  co_return !ec;
}

asio::awaitable<void> TlsStream::handshake(asio::error_code& ec) {
  ec.clear();
  for (;;) {
    ERR_clear_error();
    const int ret = SSL_do_handshake(ssl_.get());
    if (ret == 1) {
      break;
    }
    if (!co_await wait_for_retry(ret, ec)) {
      if (!ec) {
        ec = asio::error::connection_aborted;
      }
      if (state_->outcome.rejection == spiffe::Rejection::kNone && !state_->outcome.verified &&
          error_detail_.find("peer did not return a certificate") != std::string::npos) {
        state_->outcome.rejection = spiffe::Rejection::kNoCertificate;
        state_->outcome.detail = "peer sent no client certificate";
      }
      co_return;
    }
  }
  if (!state_->outcome.verified) {
    // The verify callback must have accepted the peer; a handshake that finishes without it
    // (which OpenSSL should never allow with SSL_VERIFY_PEER) is refused.
    state_->outcome.rejection = spiffe::Rejection::kNoCertificate;
    state_->outcome.detail = "handshake completed without a verified peer certificate";
    ec = asio::error::access_denied;
    co_return;
  }
  protocol_ = SSL_get_version(ssl_.get());
  const SSL_CIPHER* suite = SSL_get_current_cipher(ssl_.get());
  cipher_ = suite != nullptr ? SSL_CIPHER_get_name(suite) : "none";
  enable_kernel_offload();
  const bool own = !ktls_tx_ && !ktls_rx_ && start_own_records();
  const bool kernel = ktls_tx_ && ktls_rx_ && hand_over_to_kernel();
  OPENSSL_cleanse(state_->peer_traffic_secret.data(), state_->peer_traffic_secret.size());
  OPENSSL_cleanse(state_->own_traffic_secret.data(), state_->own_traffic_secret.size());
  state_->peer_traffic_secret = {};
  state_->own_traffic_secret = {};
  if (own || kernel) {
    ssl_.reset();  // the buffers, transcript and the peer's parsed chain go with it
    co_return;
  }
  if (!ktls_rx_) {
    // Userspace receive: let OpenSSL read several records per read() instead of a 5-byte header
    // and then the body. Only now, after the handshake: buffered records would keep the kernel
    // from taking over receive.
    SSL_set_default_read_buffer_len(ssl_.get(), kReadAheadBuffer);
    SSL_set_read_ahead(ssl_.get(), 1);
  }
  // The handshake leaves OpenSSL's record buffers allocated; an idle session should not hold them.
  SSL_free_buffers(ssl_.get());
}

void TlsStream::enable_kernel_offload() {
  ktls_tx_ = BIO_get_ktls_send(SSL_get_wbio(ssl_.get())) != 0;
  ktls_rx_ = BIO_get_ktls_recv(SSL_get_rbio(ssl_.get())) != 0;
  const std::vector<unsigned char>& secret = state_->peer_traffic_secret;
  if (context_->options().ktls == KtlsMode::kOff) {
    return;
  }
  if (!ktls_tx_) {
    ktls_detail_ = "OpenSSL did not offload transmit (kernel without tls module, or cipher " +
                   cipher() + " not offloadable)";
  }
  // OpenSSL 3.0 never offloads TLS 1.3 receive: do it here, from the captured traffic secret.
  if (!ktls_rx_ && SSL_version(ssl_.get()) == TLS1_3_VERSION && ktls_tx_) {
    if (SSL_has_pending(ssl_.get()) != 0) {
      // A record already sits in OpenSSL's buffer; the kernel would start at the wrong one.
      ktls_detail_ = "receive not offloaded: OpenSSL holds buffered records";
    } else if (secret.empty()) {
      ktls_detail_ = "receive not offloaded: traffic secret unavailable";
    } else if (auto st = ktls::install_tls13_rx(socket_.native_handle(), cipher(), secret)) {
      ktls_rx_ = true;
      manual_rx_ = true;
    } else {
      ktls_detail_ = "receive not offloaded: " + st.error().message;
    }
  }
}

bool TlsStream::start_own_records() {
  // Conditions for taking over from OpenSSL at record sequence 0 in both directions: TLS 1.3;
  // nothing read ahead (OpenSSL reads no further than the peer's Finished while read-ahead is off
  // during the handshake); no NewSessionTicket sent by us (num_tickets is 0 on every context).
  SSL* ssl = ssl_.get();
  if (SSL_version(ssl) != TLS1_3_VERSION || SSL_has_pending(ssl) != 0 ||
      (SSL_is_server(ssl) != 0 && SSL_get_num_tickets(ssl) != 0) ||
      state_->peer_traffic_secret.empty() || state_->own_traffic_secret.empty()) {
    return false;
  }
  auto rx = RecordCipher::create(cipher_, state_->peer_traffic_secret,
                                 RecordCipher::Direction::kOpen);
  auto tx = RecordCipher::create(cipher_, state_->own_traffic_secret,
                                 RecordCipher::Direction::kSeal);
  if (!rx || !tx) {
    return false;
  }
  rx_ = std::move(rx).value();
  tx_ = std::move(tx).value();
  return true;
}

bool TlsStream::hand_over_to_kernel() {
  // TLS 1.3 receive is ours already (manual_rx_); TLS 1.2 receive was installed by OpenSSL, which
  // must not have read anything past the handshake. Post-handshake messages are handled by
  // try_read_kernel() either way (TLS 1.2 renegotiation is refused, as OpenSSL does with kTLS).
  if (SSL_has_pending(ssl_.get()) != 0) {
    return false;
  }
  manual_rx_ = true;
  return true;
}

// Reads from a socket whose receive side the kernel decrypts: plaintext comes with its record
// type. Non-data records are handled here, where they arrive (RFC 8446 §4.6, §6).
std::size_t TlsStream::try_read_kernel(std::span<char> buf, asio::error_code& ec) {
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
    switch (rec.type) {
      case kApplicationData:
        if (rec.size == 0) {
          continue;
        }
        return rec.size;
      case kAlert:
        if (rec.size >= 2 && static_cast<uint8_t>(buf[1]) == 0) {
          return 0;  // close_notify: a clean end of the peer's direction
        }
        error_detail_ = "peer sent alert " +
                        ktls::alert_name(rec.size >= 2 ? static_cast<uint8_t>(buf[1]) : 255);
        ec = asio::error::connection_aborted;
        return 0;
      case kHandshake: {
        constexpr uint8_t kNewSessionTicket = 4;
        constexpr uint8_t kKeyUpdate = 24;
        const uint8_t msg = rec.size > 0 ? static_cast<uint8_t>(buf[0]) : 0;
        if (msg == kNewSessionTicket) {
          continue;  // sessions are never resumed; a third-party server's ticket is dropped
        }
        error_detail_ =
            msg == kKeyUpdate
                ? "peer sent a TLS 1.3 KeyUpdate; this connection's receive key lives in the "
                  "kernel, which cannot be re-keyed here; closing"
                : "unexpected post-handshake message " + std::to_string(msg);
        ec = asio::error::connection_aborted;
        return 0;
      }
      default:
        error_detail_ = "unexpected TLS record type " + std::to_string(rec.type);
        ec = asio::error::connection_aborted;
        return 0;
    }
  }
}

std::size_t TlsStream::try_read(std::span<char> buf, asio::error_code& ec) {
  ec.clear();
  if (rx_) {
    return try_read_records(buf, ec);
  }
  if (manual_rx_) {
    return try_read_kernel(buf, ec);
  }
  ERR_clear_error();
  size_t n = 0;
  const int ret = SSL_read_ex(ssl_.get(), buf.data(), buf.size(), &n);
  if (state_->peer_key_update && ktls_tx_) {
    error_detail_ =
        "peer sent a TLS 1.3 KeyUpdate; OpenSSL 3.0 cannot re-key kernel transmit offload; "
        "closing";
    ec = asio::error::connection_aborted;
    return 0;
  }
  if (ret == 1) {
    want_write_ = false;
    return n;
  }
  if (classify(ret, ec)) {
    // OpenSSL keeps its ~17 KiB read buffer while it waits for the next record, even with
    // SSL_MODE_RELEASE_BUFFERS; hand it back so that idle sessions cost little memory. A partial
    // record in the buffer makes this a no-op.
    SSL_free_buffers(ssl_.get());
    ec = asio::error::would_block;
  } else if (ec == asio::error::eof) {
    ec.clear();  // close_notify: end of stream
  }
  return 0;
}

asio::awaitable<void> TlsStream::wait_readable(asio::error_code& ec) {
  ec.clear();
  // Only what try_read() can use without the socket counts: a partial record waits for its rest
  // (returning at once for one would spin until it arrives).
  if (rx_ ? record_ready() : !manual_rx_ && SSL_pending(ssl_.get()) > 0) {
    co_return;
  }
  co_await socket_.async_wait(
      want_write_ ? asio::ip::tcp::socket::wait_write : asio::ip::tcp::socket::wait_read,
      asio::redirect_error(asio::use_awaitable, ec));
}

asio::awaitable<std::size_t> TlsStream::read_some(std::span<char> buf, asio::error_code& ec) {
  for (;;) {
    const std::size_t n = try_read(buf, ec);
    if (ec != asio::error::would_block) {
      co_return n;
    }
    co_await wait_readable(ec);
    if (ec) {
      co_return 0;
    }
  }
}

asio::awaitable<void> TlsStream::write_all(std::span<const char> buf, asio::error_code& ec) {
  ec.clear();
  if (tx_) {
    co_await write_records(buf, ec);
    co_return;
  }
  if (!ssl_) {  // both directions in the kernel: it makes the records
    co_await send_all(buf.data(), buf.size(), ec);
    co_return;
  }
  size_t done = 0;
  while (done < buf.size()) {
    ERR_clear_error();
    size_t n = 0;
    const int ret = SSL_write_ex(ssl_.get(), buf.data() + done, buf.size() - done, &n);
    if (ret == 1) {
      done += n;
      continue;
    }
    if (!co_await wait_for_retry(ret, ec)) {
      co_return;
    }
  }
}

asio::awaitable<void> TlsStream::shutdown_write(asio::error_code& ec) {
  ec.clear();
  if (tx_) {
    constexpr char kCloseNotify[] = {1, 0};  // warning, close_notify
    char record[sizeof(kCloseNotify) + kRecordOverhead];
    auto n = tx_->seal(kAlert, kCloseNotify, record);
    if (!n) {
      fail(n.error().message, ec, asio::error::connection_aborted);
      co_return;
    }
    co_await send_all(record, *n, ec);
    if (!ec) {
      ::shutdown(socket_.native_handle(), SHUT_WR);
    }
    co_return;
  }
  if (!ssl_) {  // both directions in the kernel: the alert goes out as a kTLS control record
    constexpr char kCloseNotify[] = {1, 0};
    co_await send_all(kCloseNotify, sizeof(kCloseNotify), ec, kAlert);
    if (!ec) {
      ::shutdown(socket_.native_handle(), SHUT_WR);
    }
    co_return;
  }
  for (;;) {
    ERR_clear_error();
    const int ret = SSL_shutdown(ssl_.get());
    // 0: our close_notify is out, the peer's not yet seen -- exactly a half-close. 1: both done.
    if (ret >= 0) {
      break;
    }
    if (!co_await wait_for_retry(ret, ec)) {
      co_return;
    }
  }
  // A TCP FIN after close_notify lets peers that only watch the socket see the end too.
  ::shutdown(socket_.native_handle(), SHUT_WR);
}

void TlsStream::close() {
  asio::error_code ignored;
  socket_.close(ignored);
  release_input();
}

bool TlsStream::record_ready() const {
  if (plain_begin_ < plain_end_ || peer_closed_ || deferred_error_) {
    return true;
  }
  const size_t avail = in_end_ - in_begin_;
  if (avail < kRecordHeader) {
    return false;
  }
  const auto* h = reinterpret_cast<const unsigned char*>(in_.get() + in_begin_);
  const size_t body = static_cast<size_t>(h[3]) << 8 | h[4];
  return body > kMaxCiphertext || avail >= kRecordHeader + body;  // a whole record, or an error
}

bool TlsStream::has_buffered_input() const {
  if (rx_) {
    return plain_begin_ < plain_end_ || in_begin_ < in_end_;
  }
  return !manual_rx_ && SSL_has_pending(ssl_.get()) != 0;
}

std::string TlsStream::protocol() const {
  return protocol_ != nullptr ? protocol_ : SSL_get_version(ssl_.get());
}

std::string TlsStream::cipher() const {
  if (cipher_ != nullptr) {
    return cipher_;
  }
  const SSL_CIPHER* c = SSL_get_current_cipher(ssl_.get());
  return c != nullptr ? SSL_CIPHER_get_name(c) : "none";
}

// ---- The userspace TLS 1.3 record layer ------------------------------------------------------

namespace {
// Received bytes are read in large chunks (several records per recv()); the buffer also holds one
// whole maximum record that straddles the end of a chunk.
constexpr size_t kInputBuffer = kReadAheadBuffer + kRecordHeader + kMaxCiphertext;
// Records sealed per send(). Two (32 KiB) measured best: one send per record costs more syscalls
// on loopback, and four (64 KiB) lost 15-20 % on a 10 Gbit/s shaped veth, where each larger push
// drags more of the receiver's softirq work into the sender's time slice.
constexpr size_t kRecordsPerSend = 2;
constexpr size_t kOutputBuffer = kRecordsPerSend * (kMaxPlaintext + kRecordOverhead);
constexpr uint8_t kNewSessionTicket = 4;
constexpr uint8_t kKeyUpdate = 24;
}  // namespace

bool TlsStream::fail(std::string detail, asio::error_code& ec, asio::error_code code) {
  error_detail_ = std::move(detail);
  ec = code;
  release_input();
  return false;
}

void TlsStream::release_input() {
  in_.reset();
  in_begin_ = in_end_ = plain_begin_ = plain_end_ = 0;
}

std::size_t TlsStream::try_read_records(std::span<char> buf, asio::error_code& ec) {
  if (plain_begin_ < plain_end_) {
    const size_t n = std::min(buf.size(), plain_end_ - plain_begin_);
    std::memcpy(buf.data(), in_.get() + plain_begin_, n);
    plain_begin_ += n;
    return n;
  }
  if (deferred_error_) {
    ec = deferred_error_;
    return 0;
  }
  if (peer_closed_) {
    return 0;
  }
  size_t total = 0;  // bytes placed in buf by this call
  // A fatal error after some data: the data goes out now, the error with the next read.
  const auto error_out = [&](std::string detail, asio::error_code code) -> std::size_t {
    asio::error_code e;
    fail(std::move(detail), e, code);
    (total == 0 ? ec : deferred_error_) = e;
    return total;
  };
  for (;;) {
    const size_t avail = in_end_ - in_begin_;
    if (avail >= kRecordHeader) {
      const auto* h = reinterpret_cast<const unsigned char*>(in_.get() + in_begin_);
      const size_t body = static_cast<size_t>(h[3]) << 8 | h[4];
      if (body > kMaxCiphertext) {
        return error_out("record_overflow: peer sent a record of " + std::to_string(body) +
                             " bytes",
                         asio::error::connection_aborted);
      }
      if (avail >= kRecordHeader + body) {
        char* record = in_.get() + in_begin_;
        // Decrypt straight into the caller's buffer when the record fits, else in place.
        const size_t room = body > kAeadTag ? body - kAeadTag : 0;
        const bool direct = buf.size() - total >= room;
        char* out = direct ? buf.data() + total : record + kRecordHeader;
        auto opened = rx_->open({record, kRecordHeader + body}, out);
        if (!opened) {
          return error_out(opened.error().message, asio::error::connection_aborted);
        }
        in_begin_ += kRecordHeader + body;
        const size_t size = opened->size;
        switch (opened->type) {
          case kApplicationData:
            if (direct) {
              total += size;
            } else if (size > 0) {
              plain_begin_ = static_cast<size_t>(out - in_.get());
              plain_end_ = plain_begin_ + size;
              const size_t n = std::min(buf.size() - total, size);
              std::memcpy(buf.data() + total, out, n);
              plain_begin_ += n;
              return total + n;
            }
            break;
          case kAlert:
            if (size == 2 && out[1] == 0) {
              peer_closed_ = true;  // close_notify: a clean end of the peer's direction
              release_input();
              return total;
            }
            return error_out(
                "peer sent alert " +
                    ktls::alert_name(size >= 2 ? static_cast<uint8_t>(out[1]) : 255),
                asio::error::connection_aborted);
          case kHandshake: {
            asio::error_code e;
            if (!post_handshake(out, size, e)) {
              (total == 0 ? ec : deferred_error_) = e;
              return total;
            }
            break;
          }
          default:
            return error_out("unexpected_message: record of type " +
                                 std::to_string(opened->type),
                             asio::error::connection_aborted);
        }
        continue;
      }
    }
    if (total > 0) {
      return total;  // deliver what we have; more is read on the next call
    }
    if (!in_) {
      in_ = std::make_unique_for_overwrite<char[]>(kInputBuffer);
    }
    if (in_begin_ > 0) {  // keep the partial record at the front
      std::memmove(in_.get(), in_.get() + in_begin_, avail);
      in_begin_ = 0;
      in_end_ = avail;
    }
    const ssize_t r =
        ::recv(socket_.native_handle(), in_.get() + in_end_, kInputBuffer - in_end_, MSG_DONTWAIT);
    if (r > 0) {
      in_end_ += static_cast<size_t>(r);
      continue;
    }
    if (r == 0) {
      return error_out(avail > 0 ? "peer closed the connection in the middle of a record"
                                 : "peer closed the connection without close_notify",
                       asio::error::connection_reset);
    }
    const int e = errno;
    if (e == EINTR) {
      continue;
    }
    if (e == EAGAIN || e == EWOULDBLOCK) {
      if (avail == 0) {
        release_input();  // an idle session holds no buffer
      }
      ec = asio::error::would_block;
      return 0;
    }
    return error_out(std::string("socket error: ") + std::strerror(e),
                     asio::error_code(e, asio::system_category()));
  }
}

bool TlsStream::post_handshake(const char* msg, std::size_t size, asio::error_code& ec) {
  size_t off = 0;
  while (off < size) {
    if (size - off < 4) {
      return fail("unexpected_message: truncated post-handshake message", ec,
                  asio::error::connection_aborted);
    }
    const auto* m = reinterpret_cast<const unsigned char*>(msg + off);
    const size_t len = static_cast<size_t>(m[1]) << 16 | static_cast<size_t>(m[2]) << 8 | m[3];
    if (len > size - off - 4) {
      return fail("unexpected_message: post-handshake message split across records", ec,
                  asio::error::connection_aborted);
    }
    if (m[0] == kNewSessionTicket) {
      off += 4 + len;  // sessions are never resumed; a third-party server's ticket is dropped
      continue;
    }
    if (m[0] != kKeyUpdate) {
      return fail("unexpected_message: post-handshake message " + std::to_string(m[0]), ec,
                  asio::error::connection_aborted);
    }
    // KeyUpdate (RFC 8446 §4.6.3): one byte, and the last message under the old key.
    if (len != 1 || m[4] > 1 || off + 5 != size) {
      return fail("decode_error: malformed KeyUpdate", ec, asio::error::connection_aborted);
    }
    if (auto st = rx_->next_generation(); !st) {
      return fail(st.error().message, ec, asio::error::connection_aborted);
    }
    if (m[4] == 1) {
      key_update_due_ = true;  // answered before our next record
    }
    off += 5;
  }
  return true;
}

asio::awaitable<void> TlsStream::write_records(std::span<const char> buf, asio::error_code& ec) {
  size_t done = 0;
  std::unique_ptr<char[]> out;
  while (done < buf.size() || key_update_due_) {
    if (!out) {
      out = std::make_unique_for_overwrite<char[]>(kOutputBuffer);
    }
    size_t fill = 0;
    if (key_update_due_) {
      constexpr char kUpdateNotRequested[] = {kKeyUpdate, 0, 0, 1, 0};
      auto n = tx_->seal(kHandshake, kUpdateNotRequested, out.get());
      auto st = n ? tx_->next_generation() : base::Status(n.error());
      if (!st) {
        fail(st.error().message, ec, asio::error::connection_aborted);
        co_return;
      }
      key_update_due_ = false;
      fill += *n;
    }
    while (done < buf.size() && fill + kMaxPlaintext + kRecordOverhead <= kOutputBuffer) {
      const size_t chunk = std::min(kMaxPlaintext, buf.size() - done);
      auto n = tx_->seal(kApplicationData, buf.subspan(done, chunk), out.get() + fill);
      if (!n) {
        fail(n.error().message, ec, asio::error::connection_aborted);
        co_return;
      }
      fill += *n;
      done += chunk;
    }
    co_await send_all(out.get(), fill, ec);
    if (ec) {
      co_return;
    }
  }
}

asio::awaitable<void> TlsStream::send_all(const char* data, std::size_t size,
                                          asio::error_code& ec, int kernel_record_type) {
  size_t sent = 0;
  while (sent < size) {
    const ssize_t n =
        kernel_record_type < 0
            ? ::send(socket_.native_handle(), data + sent, size - sent, MSG_NOSIGNAL | MSG_DONTWAIT)
            : ktls::send_record(socket_.native_handle(), static_cast<uint8_t>(kernel_record_type),
                                {data + sent, size - sent});
    if (n >= 0) {
      sent += static_cast<size_t>(n);
      continue;
    }
    const int e = errno;
    if (e == EINTR) {
      continue;
    }
    if (e != EAGAIN && e != EWOULDBLOCK) {
      error_detail_ = std::string("socket error: ") + std::strerror(e);
      ec = asio::error_code(e, asio::system_category());
      co_return;
    }
    co_await socket_.async_wait(asio::ip::tcp::socket::wait_write,
                                asio::redirect_error(asio::use_awaitable, ec));
    if (ec) {
      co_return;
    }
  }
}

}  // namespace spiffe_tunnel::tls
