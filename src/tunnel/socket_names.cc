#include "tunnel/socket_names.h"

#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/un.h>

#include <cstring>

namespace spiffe_tunnel::tunnel {

std::optional<asio::ip::tcp::endpoint> ip_endpoint(
    const asio::generic::stream_protocol::endpoint& endpoint) {
  const int family = endpoint.data()->sa_family;
  asio::ip::tcp::endpoint ip;
  if ((family != AF_INET && family != AF_INET6) || endpoint.size() > ip.capacity()) {
    return std::nullopt;
  }
  std::memcpy(ip.data(), endpoint.data(), endpoint.size());
  ip.resize(endpoint.size());
  return ip;
}

std::string endpoint_name(const asio::generic::stream_protocol::endpoint& endpoint) {
  if (const auto ip = ip_endpoint(endpoint)) {
    const auto address = ip->address();
    const std::string host = address.is_v6() ? "[" + address.to_string() + "]" : address.to_string();
    return host + ":" + std::to_string(ip->port());
  }
  const sockaddr* sa = endpoint.data();
  if (sa->sa_family == AF_UNIX) {
    const auto* un = reinterpret_cast<const sockaddr_un*>(sa);
    const std::size_t offset = offsetof(sockaddr_un, sun_path);
    if (endpoint.size() <= offset || un->sun_path[0] == '\0') {
      return "unix:(unnamed)";
    }
    return "unix:" + std::string(un->sun_path, strnlen(un->sun_path, endpoint.size() - offset));
  }
  return "?";
}

std::string peer_name(base::StreamSocket& socket) {
  asio::error_code ec;
  const auto remote = socket.remote_endpoint(ec);
  if (ec) {
    return "?";
  }
  if (remote.data()->sa_family != AF_UNIX) {
    return endpoint_name(remote);  // TCP: one getpeername, as before unix sockets existed
  }
  const auto local = socket.local_endpoint(ec);
  std::string name = ec ? "unix:?" : endpoint_name(local);
  ucred cred{};
  socklen_t size = sizeof(cred);
  if (::getsockopt(socket.native_handle(), SOL_SOCKET, SO_PEERCRED, &cred, &size) == 0) {
    name += ",pid=" + std::to_string(cred.pid) + ",uid=" + std::to_string(cred.uid);
  }
  return name;
}

}  // namespace spiffe_tunnel::tunnel
