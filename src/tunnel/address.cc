#include "spiffe_tunnel/tunnel/address.h"

namespace spiffe_tunnel::tunnel {
namespace {

std::string tcp_name(const TcpAddress& a) {
  const bool v6 = a.host.find(':') != std::string::npos;
  return (v6 ? "[" + a.host + "]" : a.host) + ":" + std::to_string(a.port);
}

}  // namespace

std::string describe(const ListenAddress& address) {
  if (const auto* tcp = std::get_if<TcpAddress>(&address)) {
    return tcp_name(*tcp);
  }
  if (const auto* path = std::get_if<UnixListenAddress>(&address)) {
    return "unix:" + path->path;
  }
  return "systemd:" + std::get<InheritedSocket>(address).name;
}

std::string describe(const TargetAddress& address) {
  if (const auto* tcp = std::get_if<TcpAddress>(&address)) {
    return tcp_name(*tcp);
  }
  return "unix:" + std::get<UnixAddress>(address).path;
}

}  // namespace spiffe_tunnel::tunnel
