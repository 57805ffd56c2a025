#pragma once
// Binding a TCP listener: parse the address, open, SO_REUSEADDR, bind, listen. Used by every
// component that accepts connections (tunnels, admin), so that a port in use or a bad address is
// reported at startup in the same words. Call from the thread that owns the acceptor.

#include <asio/ip/tcp.hpp>
#include <asio/socket_base.hpp>

#include <cstdint>
#include <string>

#include "spiffe_tunnel/base/result.h"

namespace spiffe_tunnel::base {

// Opens `acceptor` listening on host:port (port 0: any free port) and returns the bound endpoint.
// `what` names the listener in errors, which read `<what> <host>:<port>: <reason>`, e.g.
// `tunnel "kafka-in": listen 127.0.0.1:9000: Address already in use`. `host` must be an IP
// literal.
Result<asio::ip::tcp::endpoint> bind_listener(
    asio::ip::tcp::acceptor& acceptor, const std::string& what, const std::string& host,
    uint16_t port, int backlog = asio::socket_base::max_listen_connections);

}  // namespace spiffe_tunnel::base
