#include "spiffe_tunnel/tls/tls_stream.h"

#include <sys/socket.h>

#include <utility>

#include "spiffe_tunnel/tls/ktls.h"
#include "spiffe_tunnel/tls/records.h"

namespace spiffe_tunnel::tls {

std::string_view record_layer_name(RecordLayer layer) {
  switch (layer) {
    case RecordLayer::kOpenSsl:
      return "openssl";
    case RecordLayer::kUserspace:
      return "userspace";
    case RecordLayer::kKernel:
      return "kernel";
  }
  return "?";
}

TlsStream::TlsStream(base::StreamSocket socket, ConnectionInfo info)
    : socket_(std::move(socket)), info_(std::move(info)) {}

TlsStream::~TlsStream() = default;

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

std::optional<std::string> TlsStream::kernel_key_spent(uint64_t limit) const {
  const int fd = const_cast<base::StreamSocket&>(socket_).native_handle();
  for (const bool transmit : {true, false}) {
    if (!(transmit ? kernel_writes() : kernel_reads())) {
      continue;
    }
    auto state = ktls::key_state(fd, transmit);
    if (!state || !state->aes_gcm || state->records < limit) {
      continue;  // not readable (a closed socket), ChaCha20-Poly1305, or under the limit
    }
    return std::string("AEAD usage limit: the kernel ") + (transmit ? "transmit" : "receive") +
           " key (" + info_.cipher + ") has protected " + std::to_string(state->records) +
           " records, key_update_records is " + std::to_string(limit) +
           ", and this kernel cannot re-key it";
  }
  return std::nullopt;
}

bool TlsStream::send_kernel_close_notify_now() {
  if (!kernel_writes() || !socket_.is_open()) {
    return false;
  }
  const bool sent = ktls::send_record(socket_.native_handle(), kAlert, kCloseNotifyAlert) ==
                    static_cast<ssize_t>(sizeof(kCloseNotifyAlert));
  ::shutdown(socket_.native_handle(), SHUT_WR);  // and a FIN right behind it
  return sent;
}

void TlsStream::close() {
  asio::error_code ignored;
  socket_.close(ignored);
}

}  // namespace spiffe_tunnel::tls
