#pragma once
// Listener: the listening socket of one tunnel, whichever kind its address is (address.h): a TCP
// port, a unix socket the tunnel creates, or a socket inherited from systemd. open() runs on the
// app thread before the pool runs; afterwards only the tunnel's accept loop (the pool's first
// io_context) uses the acceptor. remove_socket_file() may be called from the app thread.

#include <sys/types.h>

#include <asio/basic_socket_acceptor.hpp>
#include <asio/generic/stream_protocol.hpp>
#include <asio/io_context.hpp>
#include <asio/ip/tcp.hpp>

#include <memory>
#include <optional>
#include <string>

#include "spiffe_tunnel/base/result.h"
#include "spiffe_tunnel/tunnel/address.h"

namespace spiffe_tunnel::tunnel {

using StreamAcceptor = asio::basic_socket_acceptor<asio::generic::stream_protocol>;

class Listener {
 public:
  // Binds (or adopts) the socket and listens. `what` starts every error ("tunnel \"x\":
  // listen"). With `require_tcp`, an inherited socket must be TCP (kTLS needs it).
  static base::Result<std::unique_ptr<Listener>> open(asio::io_context& io,
                                                      const ListenAddress& address,
                                                      const std::string& what, bool require_tcp);
  ~Listener();
  Listener(const Listener&) = delete;
  Listener& operator=(const Listener&) = delete;

  StreamAcceptor& acceptor() { return acceptor_; }
  // Where it listens: "127.0.0.1:9000", "unix:/run/app.sock", "systemd:web (0.0.0.0:443)".
  const std::string& description() const { return description_; }
  // The bound TCP endpoint; nullopt for a unix socket.
  const std::optional<asio::ip::tcp::endpoint>& tcp_endpoint() const { return tcp_; }
  // Removes the unix socket file this listener created, if the path still holds that file (a
  // newer process may have replaced it). Safe to call twice; a no-op for other kinds.
  void remove_socket_file();

 private:
  explicit Listener(asio::io_context& io) : acceptor_(io) {}
  base::Status bind_tcp(const TcpAddress& a, const std::string& what);
  base::Status bind_unix(const UnixListenAddress& a, const std::string& what);
  base::Status adopt(const InheritedSocket& s, const std::string& what, bool require_tcp);

  StreamAcceptor acceptor_;
  std::string description_;
  std::optional<asio::ip::tcp::endpoint> tcp_;
  // The socket file created by bind_unix(), identified by device and inode.
  std::string socket_file_;
  dev_t socket_dev_ = 0;
  ino_t socket_ino_ = 0;
};

}  // namespace spiffe_tunnel::tunnel
