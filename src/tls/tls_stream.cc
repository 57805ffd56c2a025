#include "spiffe_tunnel/tls/tls_stream.h"

#include <utility>

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

void TlsStream::close() {
  asio::error_code ignored;
  socket_.close(ignored);
}

}  // namespace spiffe_tunnel::tls
