#include "spiffe_tunnel/base/byte_stream.h"

#include <asio/read.hpp>
#include <asio/redirect_error.hpp>
#include <asio/use_awaitable.hpp>
#include <asio/write.hpp>

namespace spiffe_tunnel::base {

TcpStream::TcpStream(StreamSocket socket) : socket_(std::move(socket)) {
  asio::error_code ignored;
  socket_.non_blocking(true, ignored);
}

asio::awaitable<std::size_t> TcpStream::read_some(std::span<char> buf, asio::error_code& ec) {
  ec.clear();
  std::size_t n = co_await socket_.async_read_some(asio::buffer(buf.data(), buf.size()),
                                                   asio::redirect_error(asio::use_awaitable, ec));
  if (ec == asio::error::eof) {
    ec.clear();
    co_return 0;
  }
  co_return n;
}

std::size_t TcpStream::try_read(std::span<char> buf, asio::error_code& ec) {
  ec.clear();
  const std::size_t n = socket_.read_some(asio::buffer(buf.data(), buf.size()), ec);
  if (ec == asio::error::eof) {
    ec.clear();
    return 0;
  }
  return n;
}

asio::awaitable<void> TcpStream::wait_readable(asio::error_code& ec) {
  ec.clear();
  co_await socket_.async_wait(StreamSocket::wait_read,
                              asio::redirect_error(asio::use_awaitable, ec));
}

asio::awaitable<void> TcpStream::write_all(std::span<const char> buf, asio::error_code& ec) {
  ec.clear();
  co_await asio::async_write(socket_, asio::buffer(buf.data(), buf.size()),
                             asio::redirect_error(asio::use_awaitable, ec));
}

asio::awaitable<void> TcpStream::shutdown_write(asio::error_code& ec) {
  ec.clear();
  socket_.shutdown(StreamSocket::shutdown_send, ec);
  co_return;
}

void TcpStream::close() {
  asio::error_code ignored;
  socket_.close(ignored);
}

}  // namespace spiffe_tunnel::base
