#pragma once
// Non-blocking socket helpers shared inside tls: the classification of a failed OpenSSL call (for
// the handshake and OpenSslStream, which drive an SSL object from asio readiness), and the send
// loop of the record layers that write to the socket themselves (RecordStream, KernelStream).

#include <openssl/ssl.h>

#include <asio/awaitable.hpp>
#include <asio/error_code.hpp>

#include <cstdint>
#include <optional>
#include <span>
#include <string>

#include "spiffe_tunnel/base/byte_stream.h"

namespace spiffe_tunnel::tls {

// What an operation on a non-blocking socket waits for.
enum class SocketWait { kNone, kRead, kWrite };

// Classifies the result `ret` of a failed SSL call on `ssl`: the readiness OpenSSL asked for, or
// kNone with `ec` set (asio::error::eof for the peer's close_notify) and `detail` the reason as a
// sentence.
SocketWait classify_ssl_result(SSL* ssl, int ret, asio::error_code& ec, std::string& detail);

// Waits until `socket` is ready as `wait` (kRead or kWrite) asks.
asio::awaitable<void> wait_ready(base::StreamSocket& socket, SocketWait wait,
                                 asio::error_code& ec);

// Sends all of `data` on the non-blocking `socket`, waiting for space. With
// `kernel_record_type`, the bytes go out as one kernel TLS record of that type (a control record
// such as an alert) instead of application data. On failure `ec` is set and `detail` says why.
asio::awaitable<void> send_all(base::StreamSocket& socket, std::span<const char> data,
                               asio::error_code& ec, std::string& detail,
                               std::optional<uint8_t> kernel_record_type = std::nullopt);

// Ends our direction: sends `close_notify` (the alert as it goes on the wire: a sealed record, or
// the alert body as a kernel control record with kernel_record_type = kAlert) with send_all(),
// then a TCP FIN so that peers that only watch the socket see the end too.
asio::awaitable<void> send_close_notify(base::StreamSocket& socket,
                                        std::span<const char> close_notify, asio::error_code& ec,
                                        std::string& detail,
                                        std::optional<uint8_t> kernel_record_type = std::nullopt);

}  // namespace spiffe_tunnel::tls
