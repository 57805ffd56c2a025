// The listeners a tunnel opens besides TCP: unix sockets it creates (mode, stale files, removal
// when it stops) and sockets inherited from systemd. Through Tunnel::create, on real sockets.

#include <fcntl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <asio/local/stream_protocol.hpp>

#include <memory>
#include <string>

#include <catch2/catch.hpp>

#include "spiffe_tunnel/base/clock.h"
#include "spiffe_tunnel/base/metrics.h"
#include "spiffe_tunnel/identity/identity_store.h"
#include "spiffe_tunnel/tunnel/tunnel.h"
#include "test_support/temp_dir.h"
#include "tls/test_tls.h"

using namespace std::chrono_literals;
using namespace spiffe_tunnel;
using Catch::Matchers::Contains;
using spiffe_tunnel::testing::TempDir;

namespace {

struct Fixture {
  tunnel::IoPool pool{1};
  base::MetricsRegistry metrics;
  identity::IdentityStore store;
  TempDir dir{"st-listener"};

  base::Result<std::unique_ptr<tunnel::Tunnel>> make(
      tunnel::ListenAddress listen, tls::KtlsMode ktls = tls::KtlsMode::kAuto) {
    tunnel::TunnelOptions o;
    o.name = "t";
    o.limits = {.handshake_timeout = 10s,
                .connect_timeout = 10s,
                .idle_timeout = 0s,
                .max_connections = 10,
                .buffer_size = 64 * 1024};
    o.listen = std::move(listen);
    o.target = tunnel::UnixAddress{dir.path("backend.sock")};
    tls::TlsOptions tls_options;
    tls_options.authorizer = tls::testing::allow_any_verified();
    tls_options.ktls = ktls;
    return tunnel::Tunnel::create(
        std::move(o),
        std::make_unique<tls::ContextProvider>(tls_options, store, base::SystemClock::instance()),
        pool, metrics);
  }
};

mode_t mode_of(const std::string& path) {
  struct stat st {};
  REQUIRE(::lstat(path.c_str(), &st) == 0);
  return st.st_mode;
}

bool exists(const std::string& path) {
  struct stat st {};
  return ::lstat(path.c_str(), &st) == 0;
}

// A unix socket file nobody listens on, as a crashed process leaves it.
void leave_stale_socket(const std::string& path) {
  asio::io_context io;
  asio::local::stream_protocol::acceptor a(io, asio::local::stream_protocol::endpoint(path));
}

}  // namespace

TEST_CASE("a unix listener is created with its mode and removed when the tunnel stops") {
  Fixture f;
  const std::string path = f.dir.path("in.sock");
  auto t = f.make(tunnel::UnixListenAddress{path, 0600, std::nullopt, std::nullopt});
  INFO((t.ok() ? "" : t.error().message));
  REQUIRE(t.ok());
  CHECK(S_ISSOCK(mode_of(path)));
  CHECK((mode_of(path) & 0777) == 0600);
  CHECK((*t)->listen_address() == "unix:" + path);
  CHECK((*t)->local_endpoint().port() == 0);

  // Listening already (before start(), connections wait in the backlog).
  asio::io_context io;
  asio::local::stream_protocol::socket client(io);
  client.connect(asio::local::stream_protocol::endpoint(path));

  (*t)->stop();
  CHECK_FALSE(exists(path));
}

TEST_CASE("a stale socket file is replaced, a live one or a regular file is not") {
  Fixture f;
  const std::string path = f.dir.path("in.sock");
  leave_stale_socket(path);
  REQUIRE(exists(path));
  auto first = f.make(tunnel::UnixListenAddress{path, {}, {}, {}});
  INFO((first.ok() ? "" : first.error().message));
  REQUIRE(first.ok());

  // The first tunnel listens there now: a second one must not take the path away.
  auto second = f.make(tunnel::UnixListenAddress{path, {}, {}, {}});
  REQUIRE_FALSE(second.ok());
  CHECK_THAT(second.error().message,
             Contains("tunnel \"t\": listen unix:" + path +
                      ": another process is listening on this socket"));
  CHECK(exists(path));  // the refused tunnel did not remove the live socket

  const std::string file = f.dir.write("data.txt", "keep me\n");
  auto regular = f.make(tunnel::UnixListenAddress{file, {}, {}, {}});
  REQUIRE_FALSE(regular.ok());
  CHECK_THAT(regular.error().message,
             Contains("the path exists and is not a socket; refusing to replace it"));
  CHECK(exists(file));
}

TEST_CASE("a tunnel does not remove a socket file that another process replaced") {
  Fixture f;
  const std::string path = f.dir.path("in.sock");
  auto t = f.make(tunnel::UnixListenAddress{path, {}, {}, {}});
  REQUIRE(t.ok());
  REQUIRE(::unlink(path.c_str()) == 0);
  leave_stale_socket(path);  // a newer socket at the same path
  (*t)->stop();
  CHECK(exists(path));
}

TEST_CASE("an inherited socket must be a listening stream socket, and TCP for ktls on") {
  Fixture f;
  asio::io_context io;
  asio::ip::tcp::acceptor tcp(io, {asio::ip::address_v4::loopback(), 0});
  auto t = f.make(tunnel::InheritedSocket{"web", tcp.native_handle()}, tls::KtlsMode::kOn);
  INFO((t.ok() ? "" : t.error().message));
  REQUIRE(t.ok());
  CHECK((*t)->local_endpoint().port() == tcp.local_endpoint().port());
  CHECK_THAT((*t)->listen_address(), Contains("systemd:web (127.0.0.1:"));
  // The tunnel listens on a duplicate: the original stays open when the tunnel goes.
  t->reset();
  CHECK(::fcntl(tcp.native_handle(), F_GETFD) >= 0);

  asio::ip::tcp::socket not_listening(io);
  not_listening.open(asio::ip::tcp::v4());
  auto bad = f.make(tunnel::InheritedSocket{"web", not_listening.native_handle()});
  REQUIRE_FALSE(bad.ok());
  CHECK_THAT(bad.error().message, Contains("tunnel \"t\": listen systemd:web: the passed "
                                           "descriptor"));
  CHECK_THAT(bad.error().message, Contains("is not a listening stream socket"));

  const std::string path = f.dir.path("passed.sock");
  asio::local::stream_protocol::acceptor local(io, asio::local::stream_protocol::endpoint(path));
  auto unix_on = f.make(tunnel::InheritedSocket{"web", local.native_handle()}, tls::KtlsMode::kOn);
  REQUIRE_FALSE(unix_on.ok());
  CHECK_THAT(unix_on.error().message, Contains("ktls is \"on\" but kernel TLS needs TCP"));
  auto unix_auto = f.make(tunnel::InheritedSocket{"web", local.native_handle()});
  REQUIRE(unix_auto.ok());
  CHECK((*unix_auto)->listen_address() == "systemd:web (unix:" + path + ")");
}
