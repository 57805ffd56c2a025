#pragma once
// TlsStream: one established TLS connection, as Handshake::run() hands it over. The stream owns
// the socket and exactly one record layer, fixed at the handshake and never switched:
//   - kOpenSsl: OpenSSL's SSL_read/SSL_write on the SSL object (TLS 1.2 in userspace, anything
//     OpenSSL offloaded itself, TLS 1.3 with only one direction in the kernel);
//   - kUserspace: the own TLS 1.3 record layer (RecordCipher), the SSL object freed;
//   - kKernel: kernel TLS both ways, the SSL object freed.
// Owned by one session and used from its thread only.

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>

#include "spiffe_tunnel/base/byte_stream.h"
#include "spiffe_tunnel/tls/tls_context.h"

namespace spiffe_tunnel::tls {

// Where the records of an established connection are protected and parsed.
enum class RecordLayer { kOpenSsl, kUserspace, kKernel };

// "openssl", "userspace", "kernel".
std::string_view record_layer_name(RecordLayer layer);

// The facts of one connection, fixed when its handshake completed.
struct ConnectionInfo {
  PeerOutcome peer;           // verified and authorized by the verify callback
  std::string protocol;       // "TLSv1.3"
  std::string cipher;         // "TLS_AES_128_GCM_SHA256"
  RecordLayer record_layer = RecordLayer::kOpenSsl;
  std::string ktls_detail;    // why kernel offload was not used for a direction, "" when it was
                              // or was not wanted
  std::shared_ptr<const TlsContext> context;  // the context the handshake ran with, kept alive
  std::string server_name;    // the SNI the client sent (server role), "" when none
  std::string alpn;           // the ALPN protocol both ends agreed on, "" when none
  bool resumed = false;       // the handshake resumed a session (resumption.h)
};

// A TLS 1.3 KeyUpdate the own record layer sent or followed (RFC 8446 §4.6.3, §5.5).
struct KeyUpdateEvent {
  bool sent = false;              // ours (true) or the peer's (false)
  bool update_requested = false;  // the message asked the other side to update too
  uint64_t records = 0;           // records the key that was replaced had protected
  std::size_t generation = 0;     // the direction's traffic secret generation now in use
};

class TlsStream : public base::ByteStream {
 public:
  ~TlsStream() override;
  TlsStream(const TlsStream&) = delete;
  TlsStream& operator=(const TlsStream&) = delete;

  const ConnectionInfo& info() const { return info_; }

  // base::ByteStream, shared by every record layer
  // Loops try_read() and wait_readable().
  asio::awaitable<std::size_t> read_some(std::span<char> buf, asio::error_code& ec) final;
  void close() override;
  base::StreamSocket& socket() final { return socket_; }
  std::string last_error() const final { return error_detail_; }

  // Called for every KeyUpdate sent or followed (only the own record layer re-keys), on the
  // stream's thread. May be left empty.
  void observe_key_updates(std::function<void(const KeyUpdateEvent&)> observer) {
    key_update_observer_ = std::move(observer);
  }

  // The AEAD usage limit of the directions the kernel protects, which Linux before 6.14 cannot
  // re-key: a sentence naming the direction whose record sequence number (read from the kernel
  // with getsockopt(SOL_TLS, TLS_TX/TLS_RX)) reached `limit`, or nullopt. AES-GCM only: for
  // ChaCha20-Poly1305 the limit is far beyond any record sequence reachable (RFC 8446 §5.5).
  // One getsockopt per kernel direction; nothing for the own record layer, which re-keys.
  std::optional<std::string> kernel_key_spent(uint64_t limit) const;
  // Sends close_notify as a kernel TLS control record without waiting, when the kernel holds
  // transmit (it frames records itself, so this is safe between any two writes); best effort,
  // for a session ended on our side. False when it could not.
  bool send_kernel_close_notify_now();

 protected:
  TlsStream(base::StreamSocket socket, ConnectionInfo info);

  base::StreamSocket socket_;
  const ConnectionInfo info_;
  std::string error_detail_;  // the last TLS-level error as a sentence, "" if none
  std::function<void(const KeyUpdateEvent&)> key_update_observer_;
};

}  // namespace spiffe_tunnel::tls
