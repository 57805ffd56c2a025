#include "tunnel/listener.h"

#include <fcntl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <spdlog/spdlog.h>

#include <asio/local/stream_protocol.hpp>

#include <cerrno>
#include <cstring>

#include "spiffe_tunnel/base/listener.h"
#include "spiffe_tunnel/base/unique_fd.h"
#include "tunnel/socket_names.h"

namespace spiffe_tunnel::tunnel {
namespace {

using base::make_error;
using base::Status;

std::string errno_text() { return std::strerror(errno); }

int socket_int_option(int fd, int name) {
  int value = 0;
  socklen_t size = sizeof(value);
  return ::getsockopt(fd, SOL_SOCKET, name, &value, &size) == 0 ? value : -1;
}

// A socket file left at `path` by a process that is gone can be replaced; anything else there
// cannot. Probes with a non-blocking connect: refused means nobody listens.
Status remove_stale_socket(const std::string& path, const std::string& where) {
  struct stat st {};
  if (::lstat(path.c_str(), &st) != 0) {
    return errno == ENOENT ? Status{} : make_error(where + ": " + errno_text());
  }
  if (!S_ISSOCK(st.st_mode)) {
    return make_error(where + ": the path exists and is not a socket; refusing to replace it");
  }
  base::UniqueFd probe(::socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
  if (!probe.valid()) {
    return make_error(where + ": " + errno_text());
  }
  const asio::local::stream_protocol::endpoint ep(path);
  const int err = ::connect(probe.get(), ep.data(), ep.size()) == 0 ? 0 : errno;
  if (err == ECONNREFUSED) {
    if (::unlink(path.c_str()) != 0 && errno != ENOENT) {
      return make_error(where + ": cannot remove the stale socket: " + errno_text());
    }
    spdlog::info("{}: removed a stale socket file nobody listened on", where);
    return {};
  }
  if (err == 0 || err == EAGAIN || err == EINPROGRESS) {
    return make_error(where + ": another process is listening on this socket");
  }
  return make_error(where + ": cannot tell whether the existing socket is in use: " +
                    std::strerror(err));
}

}  // namespace

base::Result<std::unique_ptr<Listener>> Listener::open(asio::io_context& io,
                                                       const ListenAddress& address,
                                                       const std::string& what,
                                                       bool require_tcp) {
  std::unique_ptr<Listener> l(new Listener(io));
  Status st;
  if (const auto* tcp = std::get_if<TcpAddress>(&address)) {
    st = l->bind_tcp(*tcp, what);
  } else if (const auto* path = std::get_if<UnixListenAddress>(&address)) {
    st = l->bind_unix(*path, what);
  } else {
    st = l->adopt(std::get<InheritedSocket>(address), what, require_tcp);
  }
  if (!st) {
    return st.error();
  }
  return l;
}

Listener::~Listener() {
  asio::error_code ignored;
  acceptor_.close(ignored);
  remove_socket_file();
}

Status Listener::bind_tcp(const TcpAddress& a, const std::string& what) {
  asio::ip::tcp::acceptor tcp(acceptor_.get_executor());
  auto bound = base::bind_listener(tcp, what, a.host, a.port);
  if (!bound) {
    return bound.error();
  }
  tcp_ = *bound;
  description_ = endpoint_name(*bound);
  asio::error_code ec;
  acceptor_.assign(asio::generic::stream_protocol(bound->protocol()), tcp.release(), ec);
  return ec ? make_error(what + " " + description_ + ": " + ec.message()) : Status{};
}

Status Listener::bind_unix(const UnixListenAddress& a, const std::string& what) {
  description_ = "unix:" + a.path;
  const std::string where = what + " " + description_;
  if (auto st = remove_stale_socket(a.path, where); !st) {
    return st;
  }
  const asio::local::stream_protocol::endpoint ep(a.path);
  asio::error_code ec;
  acceptor_.open(asio::generic::stream_protocol(AF_UNIX, 0), ec);
  if (!ec) {
    acceptor_.bind(asio::generic::stream_protocol::endpoint(ep), ec);
  }
  if (ec) {
    return make_error(where + ": " + ec.message());
  }
  struct stat st {};
  if (::lstat(a.path.c_str(), &st) == 0) {
    socket_file_ = a.path;
    socket_dev_ = st.st_dev;
    socket_ino_ = st.st_ino;
  }
  // Mode and owner are set before listen(): until then a connect is refused, so nobody gets in
  // through the umask's permissions in between.
  std::string failed;
  if (a.mode && ::chmod(a.path.c_str(), *a.mode) != 0) {
    failed = "cannot set mode " + std::to_string(*a.mode) + ": " + errno_text();
  } else if ((a.owner || a.group) &&
             ::lchown(a.path.c_str(), a.owner ? *a.owner : static_cast<uid_t>(-1),
                      a.group ? *a.group : static_cast<gid_t>(-1)) != 0) {
    failed = "cannot set owner/group: " + errno_text();
  } else {
    acceptor_.listen(asio::socket_base::max_listen_connections, ec);
    if (ec) {
      failed = ec.message();
    }
  }
  if (!failed.empty()) {
    acceptor_.close(ec);
    remove_socket_file();
    return make_error(where + ": " + failed);
  }
  return {};
}

Status Listener::adopt(const InheritedSocket& s, const std::string& what, bool require_tcp) {
  const std::string where = what + " systemd:" + s.name;
  if (socket_int_option(s.fd, SO_TYPE) != SOCK_STREAM ||
      socket_int_option(s.fd, SO_ACCEPTCONN) != 1) {
    return make_error(where + ": the passed descriptor " + std::to_string(s.fd) +
                      " is not a listening stream socket (ListenStream= in the socket unit)");
  }
  sockaddr_storage addr{};
  socklen_t size = sizeof(addr);
  if (::getsockname(s.fd, reinterpret_cast<sockaddr*>(&addr), &size) != 0) {
    return make_error(where + ": " + errno_text());
  }
  const int family = addr.ss_family;
  if (family != AF_INET && family != AF_INET6 && family != AF_UNIX) {
    return make_error(where + ": the passed socket is neither TCP nor a unix socket");
  }
  asio::generic::stream_protocol::endpoint local(&addr, size);
  if (require_tcp && family == AF_UNIX) {
    return make_error(where + " (" + endpoint_name(local) + "): ktls is \"on\" but kernel TLS "
                      "needs TCP; use ktls: auto or off with a unix socket");
  }
  // A duplicate, so that the original stays with the caller (and systemd) when this tunnel
  // stops; close-on-exec like every descriptor this process opens.
  const int fd = ::fcntl(s.fd, F_DUPFD_CLOEXEC, 3);
  if (fd < 0) {
    return make_error(where + ": " + errno_text());
  }
  asio::error_code ec;
  acceptor_.assign(asio::generic::stream_protocol(family, family == AF_UNIX ? 0 : IPPROTO_TCP),
                   fd, ec);
  if (ec) {
    ::close(fd);
    return make_error(where + ": " + ec.message());
  }
  description_ = "systemd:" + s.name + " (" + endpoint_name(local) + ")";
  tcp_ = ip_endpoint(local);
  return {};
}

void Listener::remove_socket_file() {
  if (socket_file_.empty()) {
    return;
  }
  struct stat st {};
  if (::lstat(socket_file_.c_str(), &st) == 0 && st.st_dev == socket_dev_ &&
      st.st_ino == socket_ino_) {
    ::unlink(socket_file_.c_str());
  }
  socket_file_.clear();
}

}  // namespace spiffe_tunnel::tunnel
