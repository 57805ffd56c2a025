#include "spiffe_tunnel/base/listener.h"

namespace spiffe_tunnel::base {

Result<asio::ip::tcp::endpoint> bind_listener(asio::ip::tcp::acceptor& acceptor,
                                              const std::string& what, const std::string& host,
                                              uint16_t port, int backlog) {
  const std::string where = what + " " + host + ":" + std::to_string(port);
  asio::error_code ec;
  const auto address = asio::ip::make_address(host, ec);
  if (ec) {
    return make_error(where + ": \"" + host + "\" is not an IP address");
  }
  const asio::ip::tcp::endpoint endpoint(address, port);
  acceptor.open(endpoint.protocol(), ec);
  if (!ec) {
    acceptor.set_option(asio::ip::tcp::acceptor::reuse_address(true), ec);
  }
  if (!ec) {
    acceptor.bind(endpoint, ec);
  }
  if (!ec) {
    acceptor.listen(backlog, ec);
  }
  if (!ec) {
    auto bound = acceptor.local_endpoint(ec);
    if (!ec) {
      return bound;
    }
  }
  asio::error_code ignored;
  acceptor.close(ignored);
  return make_error(where + ": " + ec.message());
}

}  // namespace spiffe_tunnel::base
