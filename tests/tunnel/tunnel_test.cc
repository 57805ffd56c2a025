#include "spiffe_tunnel/tunnel/tunnel.h"

#include <poll.h>
#include <sys/socket.h>
#include <sys/time.h>

#include <asio/co_spawn.hpp>
#include <asio/detached.hpp>
#include <asio/io_context.hpp>
#include <asio/read.hpp>
#include <asio/redirect_error.hpp>
#include <asio/use_awaitable.hpp>
#include <asio/write.hpp>

#include <chrono>
#include <functional>
#include <future>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include <catch2/catch.hpp>

#include "spiffe_tunnel/base/clock.h"
#include "spiffe_tunnel/base/metrics.h"
#include "spiffe_tunnel/identity/identity_store.h"
#include "spiffe_tunnel/tls/tls_context.h"
#include "spiffe_tunnel/tunnel/io_pool.h"
#include "test_support/wait.h"
#include "tls/test_tls.h"

using namespace std::chrono_literals;
using namespace spiffe_tunnel;
using namespace spiffe_tunnel::tls::testing;
using Catch::Matchers::Contains;
using Socket = asio::ip::tcp::socket;
using Endpoint = asio::ip::tcp::endpoint;

namespace {

// The configuration's defaults (config::TunnelConfig).
constexpr tunnel::SessionLimits kLimits{.handshake_timeout = 10s,
                                        .connect_timeout = 10s,
                                        .idle_timeout = 0s,
                                        .max_connections = 10000,
                                        .buffer_size = 64 * 1024};

// For conditions nothing signals (a metric line, a refused connect): poll until they hold.
using spiffe_tunnel::testing::wait_until;

// Waits (without polling) until the tunnel has no open session, up to 5 s.
bool sessions_end(const tunnel::Tunnel& t) {
  return t.wait_sessions_ended(std::chrono::steady_clock::now() + 5s);
}

// True when a TCP connect to the port is refused (nothing listens there any more).
bool refuses_connections(uint16_t port) {
  asio::io_context io;
  Socket s(io);
  asio::error_code ec;
  s.connect({asio::ip::address_v4::loopback(), port}, ec);
  return ec == asio::error::connection_refused;
}

// A TCP echo server on its own thread, standing in for the target application.
class EchoBackend {
 public:
  EchoBackend() : acceptor_(io_, {asio::ip::address_v4::loopback(), 0}) {
    asio::co_spawn(io_, accept_loop(), asio::detached);
    thread_ = std::thread([this] { io_.run(); });
  }
  ~EchoBackend() {
    io_.stop();
    thread_.join();
  }
  uint16_t port() const { return acceptor_.local_endpoint().port(); }

 private:
  asio::awaitable<void> accept_loop() {
    for (;;) {
      asio::error_code ec;
      Socket s = co_await acceptor_.async_accept(asio::redirect_error(asio::use_awaitable, ec));
      if (ec) {
        co_return;
      }
      asio::co_spawn(io_, echo(std::move(s)), asio::detached);
    }
  }
  static asio::awaitable<void> echo(Socket s) {
    char buf[16384];
    for (;;) {
      asio::error_code ec;
      const std::size_t n =
          co_await s.async_read_some(asio::buffer(buf), asio::redirect_error(asio::use_awaitable, ec));
      if (ec) {
        s.shutdown(Socket::shutdown_send, ec);
        co_return;
      }
      co_await asio::async_write(s, asio::buffer(buf, n),
                                 asio::redirect_error(asio::use_awaitable, ec));
      if (ec) {
        co_return;
      }
    }
  }

  asio::io_context io_;
  asio::ip::tcp::acceptor acceptor_;
  std::thread thread_;
};

// A port on which nothing listens (bound, then released).
uint16_t closed_port() {
  asio::io_context io;
  asio::ip::tcp::acceptor a(io, {asio::ip::address_v4::loopback(), 0});
  return a.local_endpoint().port();
}

// A blocking client socket that gives up after 5 s, so a test never hangs on it.
struct App {
  asio::io_context io;
  Socket socket{io};

  explicit App(uint16_t port) {
    socket.connect({asio::ip::address_v4::loopback(), port});
    timeval limit{5, 0};
    ::setsockopt(socket.native_handle(), SOL_SOCKET, SO_RCVTIMEO, &limit, sizeof(limit));
    ::setsockopt(socket.native_handle(), SOL_SOCKET, SO_SNDTIMEO, &limit, sizeof(limit));
  }

  void send(const std::string& data) { asio::write(socket, asio::buffer(data)); }

  // Reads exactly n bytes, or fewer if the connection ends first.
  std::string receive(std::size_t n) {
    std::string out(n, '\0');
    asio::error_code ec;
    const std::size_t got = asio::read(socket, asio::buffer(out), ec);
    out.resize(got);
    return out;
  }

  // True when the tunnel ended the connection (EOF or reset) rather than the 5 s limit passing.
  bool closed_by_peer() {
    char byte;
    asio::error_code ec;
    const std::size_t n = socket.read_some(asio::buffer(&byte, 1), ec);
    return n == 0 && (ec == asio::error::eof || ec == asio::error::connection_reset);
  }
};

// A server tunnel ("in") in front of an echo backend and a client tunnel ("out") in front of it,
// both in example.org, on one IoPool with two threads. Identities are published straight into
// the stores; no files.
struct Tunnels {
  tunnel::IoPool pool{2};
  base::MetricsRegistry metrics;
  spiffe::Issuer root = make_root("example.org");
  identity::IdentityStore server_store;
  identity::IdentityStore client_store;
  EchoBackend backend;
  std::unique_ptr<tunnel::Tunnel> server;
  std::unique_ptr<tunnel::Tunnel> client;
  // More tunnels a test adds; like the two above, destroyed only after the pool has stopped
  // (a tunnel's listener is closed on the pool's first thread).
  std::vector<std::unique_ptr<tunnel::Tunnel>> others;

  explicit Tunnels(const std::function<void(tunnel::TunnelOptions&)>& tweak_server = {},
                   const std::function<void(tunnel::TunnelOptions&)>& tweak_client = {}) {
    server_store.publish(
        snapshot_of({svid_of(root, "spiffe://example.org/backend")}, {&root}));
    client_store.publish(snapshot_of({svid_of(root, "spiffe://example.org/app")}, {&root}));

    tunnel::TunnelOptions in;
    in.name = "in";
    in.limits = kLimits;
    in.target = tunnel::TcpAddress{"127.0.0.1", backend.port()};
    if (tweak_server) {
      tweak_server(in);
    }
    tls::TlsOptions in_tls;
    in_tls.role = tls::Role::kServer;
    in_tls.authorizer = allow_ids({"spiffe://example.org/app"});
    server = create(std::move(in), std::move(in_tls), server_store);

    tunnel::TunnelOptions out;
    out.name = "out";
    out.limits = kLimits;
    out.target = tunnel::TcpAddress{"127.0.0.1", server->local_endpoint().port()};
    if (tweak_client) {
      tweak_client(out);
    }
    client = make_client(std::move(out));

    pool.start();
    server->start();
    client->start();
  }

  ~Tunnels() {
    std::vector<tunnel::Tunnel*> all{client.get(), server.get()};
    for (auto& t : others) {
      all.push_back(t.get());
    }
    for (auto* t : all) {
      t->stop();
      t->close_sessions();
    }
    for (auto* t : all) {
      sessions_end(*t);
    }
    pool.stop();
  }

  // A client tunnel to the server tunnel, presenting the client store's identity.
  std::unique_ptr<tunnel::Tunnel> make_client(tunnel::TunnelOptions out) {
    tls::TlsOptions out_tls;
    out_tls.role = tls::Role::kClient;
    out_tls.authorizer = allow_ids({"spiffe://example.org/backend"});
    return create(std::move(out), std::move(out_tls), client_store);
  }

  std::unique_ptr<tunnel::Tunnel> create(tunnel::TunnelOptions options, tls::TlsOptions tls_options,
                                         const identity::IdentityStore& store) {
    auto provider = std::make_unique<tls::ContextProvider>(std::move(tls_options), store,
                                                           base::SystemClock::instance());
    auto t = tunnel::Tunnel::create(std::move(options), std::move(provider), pool, metrics);
    INFO((t.ok() ? "" : t.error().message));
    REQUIRE(t.ok());
    return std::move(*t);
  }

  uint16_t entry_port() const { return client->local_endpoint().port(); }
  uint16_t server_port() const { return server->local_endpoint().port(); }

  std::string rejected(const std::string& tunnel, const std::string& reason) const {
    return "spiffe_tunnel_connections_rejected_total{tunnel=\"" + tunnel + "\",reason=\"" +
           reason + "\"} ";
  }
  bool has_metric(const std::string& line_prefix, uint64_t value) const {
    return metrics.render().find(line_prefix + std::to_string(value) + "\n") != std::string::npos;
  }
};

}  // namespace

TEST_CASE("bytes make the round trip app → client tunnel → server tunnel → target and back") {
  Tunnels t;
  App app(t.entry_port());
  app.send("hello");
  CHECK(app.receive(5) == "hello");

  std::string big(1024 * 1024, '\0');
  for (std::size_t i = 0; i < big.size(); ++i) {
    big[i] = static_cast<char>(i * 7 + (i >> 11));
  }
  std::thread writer([&] { app.send(big); });
  const std::string echoed = app.receive(big.size());
  writer.join();
  CHECK(echoed.size() == big.size());
  CHECK((echoed == big));

  CHECK(t.server->active_sessions() == 1);
  CHECK(t.client->active_sessions() == 1);
  CHECK(t.has_metric("spiffe_tunnel_connections_established_total{tunnel=\"in\"} ", 1));
  CHECK(t.has_metric("spiffe_tunnel_connections_established_total{tunnel=\"out\"} ", 1));
  CHECK(t.server->ready());
  CHECK(t.server->readiness_detail() == "ready");

  // The app half-closes; the echo backend answers with its own end, all the way back.
  app.socket.shutdown(Socket::shutdown_send);
  CHECK(app.closed_by_peer());
  CHECK(sessions_end(*t.server));
  CHECK(t.has_metric(
      "spiffe_tunnel_bytes_total{tunnel=\"in\",direction=\"from_peer\"} ", 5 + big.size()));
}

TEST_CASE("a tunnel at max_connections refuses the next connection and counts it") {
  Tunnels t([](tunnel::TunnelOptions& o) { o.limits.max_connections = 1; });
  App first(t.entry_port());
  first.send("one");
  REQUIRE(first.receive(3) == "one");
  REQUIRE(t.server->active_sessions() == 1);

  App second(t.entry_port());  // the client tunnel accepts; the server tunnel refuses
  CHECK(second.closed_by_peer());
  CHECK(wait_until([&] { return t.has_metric(t.rejected("in", "max_connections"), 1); }));

  // The first session is unaffected.
  first.send("still");
  CHECK(first.receive(5) == "still");
}

TEST_CASE("a client that connects and says nothing is dropped at the handshake timeout") {
  Tunnels t([](tunnel::TunnelOptions& o) { o.limits.handshake_timeout = 200ms; });
  const auto start = std::chrono::steady_clock::now();
  App silent(t.server_port());  // plain TCP straight to the server tunnel, no TLS
  CHECK(silent.closed_by_peer());
  const auto waited = std::chrono::steady_clock::now() - start;
  CHECK(waited >= 150ms);
  CHECK(waited < 3s);
  CHECK(wait_until([&] { return t.has_metric(t.rejected("in", "handshake_timeout"), 1); }));
  CHECK(sessions_end(*t.server));
}

TEST_CASE("an idle session is closed after the idle timeout") {
  Tunnels t([](tunnel::TunnelOptions& o) { o.limits.idle_timeout = 300ms; });
  App app(t.entry_port());
  app.send("ping");
  REQUIRE(app.receive(4) == "ping");
  const auto start = std::chrono::steady_clock::now();
  CHECK(app.closed_by_peer());
  const auto waited = std::chrono::steady_clock::now() - start;
  CHECK(waited >= 200ms);
  CHECK(waited < 3s);
  CHECK(sessions_end(*t.server));
}

TEST_CASE("a session with traffic outlives the idle timeout") {
  Tunnels t([](tunnel::TunnelOptions& o) { o.limits.idle_timeout = 400ms; });
  App app(t.entry_port());
  for (int i = 0; i < 8; ++i) {
    app.send("tick");
    REQUIRE(app.receive(4) == "tick");
    // The pause is the behaviour under test: 800 ms in all, twice the idle timeout, yet never
    // 400 ms without traffic.
    std::this_thread::sleep_for(100ms);
  }
  CHECK(t.server->active_sessions() == 1);
}

TEST_CASE("an unreachable target refuses the session and counts target_unreachable") {
  const uint16_t nowhere = closed_port();
  Tunnels t([&](tunnel::TunnelOptions& o) { o.target = tunnel::TcpAddress{"127.0.0.1", nowhere}; });
  App app(t.entry_port());
  CHECK(app.closed_by_peer());
  CHECK(wait_until([&] { return t.has_metric(t.rejected("in", "target_unreachable"), 1); }));
  CHECK(sessions_end(*t.server));
  CHECK(t.has_metric("spiffe_tunnel_connections_established_total{tunnel=\"in\"} ", 0));
}

TEST_CASE("a target that does not answer a connect is given up at the connect timeout") {
  // A listener whose accept queue is full drops further SYNs, so a connect just hangs.
  asio::io_context io;
  asio::ip::tcp::acceptor full(io);
  full.open(asio::ip::tcp::v4());
  full.bind({asio::ip::address_v4::loopback(), 0});
  full.listen(0);
  std::vector<Socket> fillers;
  for (int i = 0; i < 4; ++i) {
    Socket s(io);
    s.open(asio::ip::tcp::v4());
    s.non_blocking(true);
    // Not Socket::connect, which waits for the answer.
    const Endpoint ep = full.local_endpoint();
    ::connect(s.native_handle(), ep.data(), static_cast<socklen_t>(ep.size()));
    fillers.push_back(std::move(s));
  }
  // The first connect completing means the accept queue (room for one) is full.
  pollfd first{fillers.front().native_handle(), POLLOUT, 0};
  REQUIRE(::poll(&first, 1, 5000) == 1);
  Tunnels t([&](tunnel::TunnelOptions& o) {
    o.target = tunnel::TcpAddress{"127.0.0.1", full.local_endpoint().port()};
    o.limits.connect_timeout = 200ms;
  });
  const auto start = std::chrono::steady_clock::now();
  App app(t.entry_port());
  CHECK(app.closed_by_peer());
  CHECK(std::chrono::steady_clock::now() - start < 3s);
  CHECK(wait_until([&] { return t.has_metric(t.rejected("in", "target_unreachable"), 1); }));
  CHECK(sessions_end(*t.server));
}

TEST_CASE("a client the server does not allow never reaches the target") {
  Tunnels t;
  // Replace the app's identity with one the server tunnel does not allow.
  t.client_store.publish(snapshot_of({svid_of(t.root, "spiffe://example.org/intruder")}, {&t.root}));
  App app(t.entry_port());
  CHECK(app.closed_by_peer());
  CHECK(wait_until([&] { return t.has_metric(t.rejected("in", "not_authorized"), 1); }));
  CHECK(t.has_metric("spiffe_tunnel_connections_established_total{tunnel=\"in\"} ", 0));
}

TEST_CASE("a tunnel without an identity refuses connections as not ready") {
  Tunnels t;
  t.server_store.withdraw();
  CHECK_FALSE(t.server->ready());
  CHECK_THAT(t.server->readiness_detail(), Contains("no identity held"));
  App app(t.entry_port());
  CHECK(app.closed_by_peer());
  CHECK(wait_until([&] { return t.has_metric(t.rejected("in", "not_ready"), 1); }));
}

TEST_CASE("stop() ends accepting, and close_sessions() ends the sessions still open") {
  Tunnels t;
  App app(t.entry_port());
  app.send("before");
  REQUIRE(app.receive(6) == "before");

  t.client->stop();
  t.client->stop();  // safe twice
  // New connections are refused once the listener is closed.
  CHECK(wait_until([&] { return refuses_connections(t.entry_port()); }));
  // The open session still works.
  app.send("during");
  CHECK(app.receive(6) == "during");
  CHECK(t.client->active_sessions() == 1);

  t.client->close_sessions();
  CHECK(app.closed_by_peer());
  CHECK(sessions_end(*t.client));
  CHECK(sessions_end(*t.server));
}

TEST_CASE("a tunnel reports a listen address it cannot bind") {
  tunnel::IoPool pool(1);
  base::MetricsRegistry metrics;
  identity::IdentityStore store;
  asio::io_context io;
  asio::ip::tcp::acceptor taken(io, {asio::ip::address_v4::loopback(), 0});
  auto make = [&](std::string host, uint16_t port) {
    tunnel::TunnelOptions o;
    o.name = "busy";
    o.limits = kLimits;
    o.listen = tunnel::TcpAddress{std::move(host), port};
    tls::TlsOptions tls_options;
    tls_options.authorizer = allow_any_verified();
    return tunnel::Tunnel::create(
        std::move(o),
        std::make_unique<tls::ContextProvider>(tls_options, store, base::SystemClock::instance()),
        pool, metrics);
  };
  auto in_use = make("127.0.0.1", taken.local_endpoint().port());
  REQUIRE_FALSE(in_use.ok());
  CHECK_THAT(in_use.error().message, Contains("tunnel \"busy\": listen 127.0.0.1:"));
  auto bad_host = make("localhost", 0);
  REQUIRE_FALSE(bad_host.ok());
  CHECK_THAT(bad_host.error().message, Contains("\"localhost\" is not an IP address"));
}

TEST_CASE("a tunnel drained alone closes its own sessions while another tunnel keeps serving") {
  Tunnels t;
  tunnel::TunnelOptions other;
  other.name = "out2";
  other.limits = kLimits;
  other.target = tunnel::TcpAddress{"127.0.0.1", t.server_port()};
  tunnel::Tunnel* second = t.others.emplace_back(t.make_client(std::move(other))).get();
  second->start();

  App drained(t.entry_port());
  drained.send("one");
  REQUIRE(drained.receive(3) == "one");
  App kept(second->local_endpoint().port());
  kept.send("two");
  REQUIRE(kept.receive(3) == "two");

  const auto start = std::chrono::steady_clock::now();
  CHECK(t.client->drain(start + 300ms) == 1);  // the session did not end by itself: closed
  CHECK(std::chrono::steady_clock::now() - start >= 250ms);
  CHECK(t.client->active_sessions() == 0);
  CHECK(drained.closed_by_peer());
  CHECK(wait_until([&] {
    return t.has_metric("spiffe_tunnel_sessions_closed_total{tunnel=\"out\",reason=\"draining\"} ", 1);
  }));
  CHECK(wait_until([&] { return refuses_connections(t.entry_port()); }));
  CHECK(t.client->drain(std::chrono::steady_clock::now()) == 0);  // safe twice

  // The other tunnel: its open session and new ones are untouched.
  kept.send("still");
  CHECK(kept.receive(5) == "still");
  App fresh(second->local_endpoint().port());
  fresh.send("new");
  CHECK(fresh.receive(3) == "new");
  CHECK(second->active_sessions() == 2);
}

TEST_CASE("a drain returns as soon as the sessions end on their own") {
  Tunnels t;
  App app(t.entry_port());
  app.send("bye");
  REQUIRE(app.receive(3) == "bye");
  const auto start = std::chrono::steady_clock::now();
  auto drained = std::async(std::launch::async,
                            [&] { return t.client->drain(start + 20s); });
  // The app ends the session: half-close, the backend answers with its own end.
  app.socket.shutdown(Socket::shutdown_send);
  CHECK(app.closed_by_peer());
  REQUIRE(drained.wait_for(10s) == std::future_status::ready);
  CHECK(drained.get() == 0);  // nothing had to be closed
  CHECK(std::chrono::steady_clock::now() - start < 10s);
}

TEST_CASE("a session keeps the context it started with when the tunnel's context is swapped") {
  Tunnels t;
  App old_session(t.entry_port());
  old_session.send("old");
  REQUIRE(old_session.receive(3) == "old");
  REQUIRE(t.server->context()->limits.idle_timeout == 0ms);

  // New sessions of the server tunnel get a 200 ms idle timeout; the open one keeps none.
  auto next = std::make_shared<tunnel::TunnelContext>(*t.server->context());
  next->limits.idle_timeout = 200ms;
  t.server->swap_context(next);
  CHECK(t.server->context() == next);

  App new_session(t.entry_port());
  new_session.send("new");
  REQUIRE(new_session.receive(3) == "new");
  const auto idle_from = std::chrono::steady_clock::now();
  CHECK(new_session.closed_by_peer());  // the new context's idle timeout
  CHECK(std::chrono::steady_clock::now() - idle_from >= 150ms);

  // The old session has been idle at least as long, and still works.
  old_session.send("still");
  CHECK(old_session.receive(5) == "still");
  CHECK(t.server->active_sessions() == 1);
}

TEST_CASE("update_policy ends the open sessions of peers it no longer allows, and only those") {
  Tunnels t;
  // A second client tunnel with another identity, allowed by the server tunnel too.
  identity::IdentityStore other_store;
  other_store.publish(snapshot_of({svid_of(t.root, "spiffe://example.org/other")}, {&t.root}));
  tls::TlsOptions in_tls;
  in_tls.role = tls::Role::kServer;
  in_tls.authorizer = allow_ids({"spiffe://example.org/app", "spiffe://example.org/other"});
  t.server->update_policy(std::make_unique<tls::ContextProvider>(
                              in_tls, t.server_store, base::SystemClock::instance()),
                          nullptr);
  tunnel::TunnelOptions o;
  o.name = "other";
  o.limits = kLimits;
  o.target = tunnel::TcpAddress{"127.0.0.1", t.server_port()};
  tls::TlsOptions out_tls;
  out_tls.role = tls::Role::kClient;
  out_tls.authorizer = allow_ids({"spiffe://example.org/backend"});
  tunnel::Tunnel* other = t.others.emplace_back(t.create(std::move(o), out_tls, other_store)).get();
  other->start();

  App app(t.entry_port());
  app.send("app");
  REQUIRE(app.receive(3) == "app");
  App denied(other->local_endpoint().port());
  denied.send("other");
  REQUIRE(denied.receive(5) == "other");
  REQUIRE(t.server->active_sessions() == 2);

  // The new policy allows app only.
  in_tls.authorizer = allow_ids({"spiffe://example.org/app"});
  t.server->update_policy(std::make_unique<tls::ContextProvider>(
                              in_tls, t.server_store, base::SystemClock::instance()),
                          nullptr);
  CHECK(denied.closed_by_peer());
  CHECK(wait_until([&] { return t.server->active_sessions() == 1; }));
  CHECK(t.has_metric(
      "spiffe_tunnel_sessions_closed_total{tunnel=\"in\",reason=\"policy_changed\"} ", 1));
  app.send("still");
  CHECK(app.receive(5) == "still");

  // New handshakes use it too: the other identity is refused, app is served.
  App again(other->local_endpoint().port());
  CHECK(again.closed_by_peer());
  App fresh(t.entry_port());
  fresh.send("new");
  CHECK(fresh.receive(3) == "new");
}

TEST_CASE("a listener released by one version of a tunnel is adopted by the next") {
  Tunnels t;
  App old_session(t.entry_port());
  old_session.send("old");
  REQUIRE(old_session.receive(3) == "old");

  const uint16_t port = t.entry_port();
  auto listener = t.client->release_listener();
  REQUIRE(listener != nullptr);
  CHECK(t.client->release_listener() == nullptr);  // once
  // Between the versions the address does not refuse: the connection waits in the backlog.
  App queued(port);

  tunnel::TunnelOptions next;
  next.name = "out";
  next.limits = kLimits;
  next.listener = std::move(listener);
  next.target = tunnel::TcpAddress{"127.0.0.1", t.server_port()};
  tunnel::Tunnel* v2 = t.others.emplace_back(t.make_client(std::move(next))).get();
  CHECK(v2->local_endpoint().port() == port);
  v2->start();

  queued.send("queued");
  CHECK(queued.receive(6) == "queued");
  CHECK(v2->active_sessions() == 1);
  // The old version keeps its open session until it is drained.
  old_session.send("still");
  CHECK(old_session.receive(5) == "still");
  CHECK(t.client->active_sessions() == 1);
}

TEST_CASE("with proxy_protocol v2 the target reads the header, then the peer's bytes") {
  Tunnels t([](tunnel::TunnelOptions& o) { o.proxy_protocol = tunnel::ProxyProtocol::kV2; });
  App app(t.entry_port());
  app.send("hello");
  // The echo target sends back what it read: the header first, then "hello".
  const std::string fixed = app.receive(16);
  REQUIRE(fixed.substr(0, 12) == std::string("\r\n\r\n\0\r\nQUIT\n", 12));
  CHECK(fixed[12] == '\x21');  // version 2, PROXY
  CHECK(fixed[13] == '\x11');  // TCP over IPv4
  const std::size_t length = static_cast<uint8_t>(fixed[14]) << 8 | static_cast<uint8_t>(fixed[15]);
  const std::string rest = app.receive(length + 5);
  // Destination: the server tunnel's own address and port.
  CHECK(rest.substr(4, 4) == std::string("\x7f\x00\x00\x01", 4));
  const uint16_t dst_port = static_cast<uint8_t>(rest[10]) << 8 | static_cast<uint8_t>(rest[11]);
  CHECK(dst_port == t.server_port());
  CHECK_THAT(rest, Contains("spiffe://example.org/app") && Contains("TLSv1.3"));
  CHECK(rest.substr(length) == "hello");
}

TEST_CASE("a client tunnel refuses to send a PROXY protocol header") {
  tunnel::IoPool pool(1);
  base::MetricsRegistry metrics;
  identity::IdentityStore store;
  tunnel::TunnelOptions o;
  o.name = "out";
  o.limits = kLimits;
  o.proxy_protocol = tunnel::ProxyProtocol::kV2;
  tls::TlsOptions tls_options;
  tls_options.role = tls::Role::kClient;
  tls_options.authorizer = allow_any_verified();
  auto made = tunnel::Tunnel::create(
      std::move(o),
      std::make_unique<tls::ContextProvider>(tls_options, store, base::SystemClock::instance()),
      pool, metrics);
  REQUIRE_FALSE(made.ok());
  CHECK_THAT(made.error().message, Contains("sent by server tunnels only"));
}

TEST_CASE("a tunnel built but never started closes its listener when destroyed") {
  Tunnels t;  // the pool runs, as during a reload
  tunnel::TunnelOptions o;
  o.name = "prepared";
  o.limits = kLimits;
  o.target = tunnel::TcpAddress{"127.0.0.1", t.server_port()};
  auto prepared = t.make_client(std::move(o));
  const uint16_t port = prepared->local_endpoint().port();
  CHECK_FALSE(refuses_connections(port));  // bound and listening (the backlog takes it)
  prepared.reset();                        // a rejected reload drops what it prepared
  CHECK(refuses_connections(port));        // closed at once, nothing left on the pool's thread
  App app(t.entry_port());                 // the pool's first thread still serves
  app.send("ok");
  CHECK(app.receive(2) == "ok");
}

// ---------------------------------------------------------------- what ends an established session

namespace {

// Both tunnels re-check their sessions on every publish, as the daemon wires them.
void follow_stores(Tunnels& t) {
  t.server_store.subscribe([&t](const auto&) { t.server->recheck_identity(); });
  t.client_store.subscribe([&t](const auto&) { t.client->recheck_identity(); });
}

// One session app → out → in → echo that has carried bytes, with the stores followed.
struct LiveSession {
  Tunnels t;
  App app;
  explicit LiveSession(const std::function<void(tunnel::TunnelOptions&)>& tweak_server = {})
      : t(tweak_server), app(t.entry_port()) {
    follow_stores(t);
    app.send("hello");
    REQUIRE(app.receive(5) == "hello");
  }
};

std::string closed(const std::string& tunnel, const std::string& reason) {
  return "spiffe_tunnel_sessions_closed_total{tunnel=\"" + tunnel + "\",reason=\"" + reason +
         "\"} ";
}

}  // namespace

TEST_CASE("max_connection_age ends a busy session at that age") {
  const auto start = std::chrono::steady_clock::now();
  LiveSession s([](tunnel::TunnelOptions& o) { o.limits.max_connection_age = 400ms; });
  Tunnels& t = s.t;
  App& app = s.app;
  CHECK(app.closed_by_peer());
  const auto age = std::chrono::steady_clock::now() - start;
  CHECK(age >= 350ms);
  CHECK(age < 1500ms);
  CHECK(wait_until([&] { return t.has_metric(closed("in", "max_connection_age"), 1); }));
}

TEST_CASE("a peer whose SVID reaches notAfter is cut then, not before") {
  Tunnels t;
  spiffe::CertSpec brief;
  brief.not_before_offset = -1s;
  brief.lifetime = 3s;  // from notBefore: notAfter is 2 s from now
  auto short_lived = svid_of(t.root, "spiffe://example.org/backend", {}, brief);
  const auto not_after = short_lived->not_after();
  // Presented first; the renewal of the same ID held beside it keeps the server side's own
  // identity valid, so only the client tunnel's check of its peer ends the session.
  t.server_store.publish(
      snapshot_of({short_lived, svid_of(t.root, "spiffe://example.org/backend")}, {&t.root}));
  App app(t.entry_port());
  app.send("hello");
  REQUIRE(app.receive(5) == "hello");
  CHECK(app.closed_by_peer());
  const auto late = std::chrono::system_clock::now() - not_after;
  CHECK(late >= -50ms);
  CHECK(late < 1s);
  // The client tunnel verified the backend's chain: it ends the session.
  CHECK(wait_until([&] { return t.has_metric(closed("out", "peer_expired"), 1); }));
}

TEST_CASE("a bundle without the peer's CA ends its session with peer_untrusted") {
  LiveSession s;
  Tunnels& t = s.t;
  App& app = s.app;
  const spiffe::Issuer rotated = make_root("example.org");
  // The client keeps its own SVID, but example.org's bundle now holds another CA only.
  t.client_store.publish(snapshot_of({svid_of(t.root, "spiffe://example.org/app")}, {&rotated}));
  CHECK(app.closed_by_peer());
  CHECK(wait_until([&] { return t.has_metric(closed("out", "peer_untrusted"), 1); }));
}

TEST_CASE("rotations of either side's SVID to the same ID end nothing; a withdraw does") {
  LiveSession s;
  Tunnels& t = s.t;
  App& app = s.app;
  t.server_store.publish(snapshot_of({svid_of(t.root, "spiffe://example.org/backend")}, {&t.root}));
  t.client_store.publish(snapshot_of({svid_of(t.root, "spiffe://example.org/app")}, {&t.root}));
  std::this_thread::sleep_for(100ms);
  app.send("still");
  CHECK(app.receive(5) == "still");

  t.server_store.withdraw();  // revoked: PermissionDenied, entry deleted
  CHECK(app.closed_by_peer());
  CHECK(wait_until([&] { return t.has_metric(closed("in", "local_identity_lost"), 1); }));
}
