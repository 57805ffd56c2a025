#pragma once
// Addresses of sockets as logs and /status show them: "10.0.0.7:53122", "[::1]:9000",
// "unix:/run/app.sock". Any thread; each call is one or two syscalls on the given socket.

#include <asio/generic/stream_protocol.hpp>
#include <asio/ip/tcp.hpp>

#include <optional>
#include <string>

#include "spiffe_tunnel/base/byte_stream.h"

namespace spiffe_tunnel::tunnel {

// The IPv4/IPv6 endpoint inside a generic one; nullopt for a unix (or other) endpoint.
std::optional<asio::ip::tcp::endpoint> ip_endpoint(
    const asio::generic::stream_protocol::endpoint& endpoint);

// An endpoint of any family as text; "?" for one it does not know.
std::string endpoint_name(const asio::generic::stream_protocol::endpoint& endpoint);

// Who is at the other end of an accepted connection: the peer's address for TCP; for a unix
// socket (whose clients have no address) the listener's path and the peer process from
// SO_PEERCRED: "unix:/run/app.sock,pid=4242,uid=1000". "?" when the kernel cannot say.
std::string peer_name(base::StreamSocket& socket);

}  // namespace spiffe_tunnel::tunnel
