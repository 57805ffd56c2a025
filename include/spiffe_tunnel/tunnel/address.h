#pragma once
// The addresses a tunnel listens on and connects to, as the tunnel module understands them: TCP,
// unix stream sockets, and listening sockets handed over by the service manager (systemd socket
// activation). app maps the configuration onto these; plain values, copied freely.

#include <cstdint>
#include <optional>
#include <string>
#include <variant>

namespace spiffe_tunnel::tunnel {

// host:port. A listen host is an IP literal; a target host may be a name (resolved per session).
struct TcpAddress {
  std::string host;
  uint16_t port = 0;  // listen: 0 picks a free port (tests)
};

// A unix stream socket at an absolute path.
struct UnixAddress {
  std::string path;
};

// A unix socket the tunnel creates, and how. A stale socket file at the path (one nobody listens
// on) is replaced; any other file there is an error. The file is removed when the tunnel stops.
struct UnixListenAddress {
  std::string path;
  std::optional<uint32_t> mode;   // permission bits; unset: as the umask gives
  std::optional<uint32_t> owner;  // uid; unset: the process's
  std::optional<uint32_t> group;  // gid; unset: the process's
};

// A listening stream socket the process inherited (systemd's LISTEN_FDS), by name. The tunnel
// duplicates `fd`; the caller keeps the original (systemd holds the socket open as well).
struct InheritedSocket {
  std::string name;
  int fd = -1;
};

using ListenAddress = std::variant<TcpAddress, UnixListenAddress, InheritedSocket>;
using TargetAddress = std::variant<TcpAddress, UnixAddress>;

}  // namespace spiffe_tunnel::tunnel
