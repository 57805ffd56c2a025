#include "spiffe_tunnel/tls/tls_stream.h"

#include <openssl/err.h>
#include <openssl/ssl.h>
#include <sys/socket.h>
#include <sys/time.h>

#include <asio/co_spawn.hpp>
#include <asio/use_awaitable.hpp>
#include <asio/write.hpp>

#include <chrono>
#include <memory>
#include <string>
#include <thread>

#include <catch2/catch.hpp>

#include "spiffe_tunnel/base/clock.h"
#include "spiffe_tunnel/identity/identity_store.h"
#include "spiffe_tunnel/tls/handshake.h"
#include "spiffe_tunnel/tls/ktls.h"
#include "spiffe_tunnel/tls/tls_context.h"
#include "tls/test_tls.h"
#include "tls/tls_pair.h"

using namespace std::chrono_literals;
using namespace spiffe_tunnel;
using namespace spiffe_tunnel::tls::testing;
using Catch::Matchers::Contains;
using spiffe::Rejection;
using tls::ContextProvider;
using tls::RecordLayer;
using tls::Role;
using tls::TlsContext;
using tls::TlsOptions;
using tls::TlsStream;

// g++ 12 may evaluate a co_await twice when it sits inside an assertion macro's expression, so
// every co_await below stores its result before a CHECK looks at it.

namespace {

using ContextPtr = std::shared_ptr<const TlsContext>;

// Reads exactly `n` bytes (or fewer at end of stream).
asio::awaitable<std::string> read_exactly(base::ByteStream& s, std::size_t n,
                                          asio::error_code& ec) {
  std::string out;
  char buf[4096];
  while (out.size() < n) {
    const std::size_t got =
        co_await s.read_some({buf, std::min(sizeof(buf), n - out.size())}, ec);
    if (ec || got == 0) {
      break;
    }
    out.append(buf, got);
  }
  co_return out;
}

// A standard-conforming pair: both in example.org, each allowing the other.
struct GoodPair : PairSetup {
  GoodPair() {
    server.authorizer = allow_ids({"spiffe://example.org/client"});
    client.authorizer = allow_ids({"spiffe://example.org/server"});
  }
};

}  // namespace

TEST_CASE("a mutual TLS 1.3 handshake tells each side the other's SPIFFE ID") {
  GoodPair p;
  Connection c = p.connect();
  REQUIRE(c.client.ok());
  REQUIRE(c.server.ok());

  const tls::ConnectionInfo& server = c.server.stream->info();
  CHECK(server.peer.verified);
  CHECK(server.peer.rejection == Rejection::kNone);
  REQUIRE(server.peer.peer_id);
  CHECK(server.peer.peer_id->str() == "spiffe://example.org/client");
  CHECK_THAT(server.peer.authorized_by, Contains("spiffe://example.org/client is listed"));

  const tls::ConnectionInfo& client = c.client.stream->info();
  CHECK(client.peer.verified);
  REQUIRE(client.peer.peer_id);
  CHECK(client.peer.peer_id->str() == "spiffe://example.org/server");

  CHECK(client.protocol == "TLSv1.3");
  CHECK(server.protocol == "TLSv1.3");
  CHECK(client.cipher == "TLS_AES_128_GCM_SHA256");  // first in the default preference
  CHECK(c.server.stream->last_error().empty());
  CHECK(c.server.failure().reason.empty());
}

TEST_CASE("without kernel TLS both directions stay in userspace and the stream says why") {
  GoodPair p;
  Connection c = p.connect();
  REQUIRE(c.client.ok());
  REQUIRE(c.server.ok());
  if (tls::ktls::probe_kernel_tls().ok()) {
    WARN("this host has kernel TLS; the UML integration tests cover offload");
    return;
  }
  for (TlsStream* s : {c.client.stream.get(), c.server.stream.get()}) {
    CHECK_FALSE(s->kernel_writes());
    CHECK_FALSE(s->kernel_reads());
    CHECK(s->info().record_layer != RecordLayer::kKernel);
    CHECK_THAT(s->info().ktls_detail, Contains("did not offload transmit"));
  }
}

TEST_CASE("ktls on refuses a connection the kernel did not take both ways, in the handshake") {
  PairSetup p;
  p.server.ktls = tls::KtlsMode::kOn;
  Connection c = p.connect();
  if (tls::ktls::probe_kernel_tls().ok()) {
    WARN("this host has kernel TLS; the UML integration tests cover offload");
    return;
  }
  REQUIRE_FALSE(c.server.ok());
  // The peer itself was fine: only the record layer is refused.
  CHECK(c.server.outcome().verified);
  CHECK(c.server.outcome().rejection == Rejection::kNone);
  CHECK(c.server.failure().reason == "ktls_unavailable");
  CHECK(c.server.failure().detail ==
        "ktls is \"on\" but this connection (TLSv1.3 TLS_AES_128_GCM_SHA256) was not offloaded "
        "both ways: OpenSSL did not offload transmit (kernel without tls module, or cipher "
        "TLS_AES_128_GCM_SHA256 not offloadable)");
  // The client (ktls auto) is not affected by the server's setting.
  if (c.client.ok()) {
    CHECK(c.client.stream->info().record_layer == RecordLayer::kUserspace);
  }
}

TEST_CASE("with ktls off the stream neither offloads nor explains") {
  PairSetup p;
  p.server.ktls = tls::KtlsMode::kOff;
  p.client.ktls = tls::KtlsMode::kOff;
  Connection c = p.connect();
  REQUIRE(c.client.ok());
  REQUIRE(c.server.ok());
  TlsStream& client = *c.client.stream;
  CHECK_FALSE(client.kernel_writes());
  CHECK_FALSE(client.kernel_reads());
  CHECK(client.info().ktls_detail.empty());
  CHECK(client.info().record_layer == RecordLayer::kUserspace);
}

TEST_CASE("data flows both ways and a half-close leaves the other direction open") {
  GoodPair p;
  Connection c = p.connect();
  REQUIRE(c.client.ok());
  REQUIRE(c.server.ok());
  // No kernel offload here: TLS 1.3 records are this stream's own, both ends.
  CHECK(c.client.stream->info().record_layer == RecordLayer::kUserspace);
  CHECK(c.server.stream->info().record_layer == RecordLayer::kUserspace);
  CHECK(tls::record_layer_name(c.server.stream->info().record_layer) == "userspace");
  asio::io_context& io = p.io;

  // Larger than one TLS record and than the socket buffers, so writes must wait for reads.
  std::string big(3 * 1024 * 1024 + 17, '\0');
  for (std::size_t i = 0; i < big.size(); ++i) {
    big[i] = static_cast<char>((i * 131) ^ (i >> 9));
  }

  bool server_done = false;
  bool client_done = false;
  asio::co_spawn(
      io,
      [&]() -> asio::awaitable<void> {
        TlsStream& s = *c.server.stream;
        asio::error_code ec;
        const std::string got = co_await read_exactly(s, big.size(), ec);
        REQUIRE_FALSE(ec);
        CHECK((got == big));
        // The client half-closes: the server reads a clean end of stream...
        char byte;
        const std::size_t n = co_await s.read_some({&byte, 1}, ec);
        CHECK_FALSE(ec);
        CHECK(n == 0);
        // ...and can still answer.
        co_await s.write_all(std::string_view("still here"), ec);
        REQUIRE_FALSE(ec);
        co_await s.shutdown_write(ec);
        CHECK_FALSE(ec);
        server_done = true;
      },
      rethrow);
  asio::co_spawn(
      io,
      [&]() -> asio::awaitable<void> {
        TlsStream& s = *c.client.stream;
        asio::error_code ec;
        co_await s.write_all(big, ec);
        REQUIRE_FALSE(ec);
        co_await s.shutdown_write(ec);
        REQUIRE_FALSE(ec);
        const std::string reply = co_await read_exactly(s, 100, ec);
        CHECK_FALSE(ec);
        CHECK(reply == "still here");  // short: the server's close_notify ended it
        char byte;
        const std::size_t n = co_await s.read_some({&byte, 1}, ec);
        CHECK(n == 0);
        CHECK_FALSE(ec);
        client_done = true;
      },
      rethrow);
  run_bounded(io);
  CHECK(server_done);
  CHECK(client_done);
}

TEST_CASE("the server refuses a client from a trust domain it holds no bundle for") {
  PairSetup p;
  p.client_svid = p.pki.stranger;
  p.client_trusts_other_org = true;
  Connection c = p.connect();

  REQUIRE_FALSE(c.server.ok());
  CHECK(c.server.outcome().rejection == Rejection::kUntrustedDomain);
  REQUIRE(c.server.outcome().peer_id);
  CHECK(c.server.outcome().peer_id->str() == "spiffe://other.org/client");
  CHECK_THAT(c.server.outcome().detail, Contains("other.org"));
  CHECK_FALSE(c.server.outcome().verified);
  CHECK(c.server.failure().reason == spiffe::rejection_label(Rejection::kUntrustedDomain));
  CHECK(c.server.failure().detail == c.server.outcome().detail);

  // In TLS 1.3 the client finishes first; it learns of the refusal from the server's alert.
  if (c.client.ok()) {
    TlsStream& client = *c.client.stream;
    asio::co_spawn(
        p.io,
        [&]() -> asio::awaitable<void> {
          asio::error_code ec;
          char byte;
          const std::size_t n = co_await client.read_some({&byte, 1}, ec);
          CHECK(n == 0);
          CHECK(ec);
          CHECK_THAT(client.last_error(), Contains("alert"));
        },
        rethrow);
    run_bounded(p.io);
  }
}

TEST_CASE("the server refuses a verified client its policy does not allow") {
  PairSetup p;
  p.server.authorizer = allow_ids({"spiffe://example.org/client"});
  p.client_svid = svid_of(p.pki.example, "spiffe://example.org/intruder");
  Connection c = p.connect();
  REQUIRE_FALSE(c.server.ok());
  CHECK(c.server.outcome().rejection == Rejection::kNotAuthorized);
  CHECK_THAT(c.server.outcome().detail,
             Contains("peer spiffe://example.org/intruder is not authorized"));
  CHECK(c.server.failure().reason == spiffe::rejection_label(Rejection::kNotAuthorized));
}

TEST_CASE("the client refuses a server that is not in its expect list") {
  PairSetup p;
  p.client.authorizer = allow_ids({"spiffe://example.org/database"});
  Connection c = p.connect();

  REQUIRE_FALSE(c.client.ok());
  CHECK(c.client.outcome().rejection == Rejection::kNotAuthorized);
  REQUIRE(c.client.outcome().peer_id);
  CHECK(c.client.outcome().peer_id->str() == "spiffe://example.org/server");
  CHECK_THAT(c.client.outcome().detail,
             Contains("peer spiffe://example.org/server is not authorized"));
  CHECK_THAT(c.client.outcome().detail, Contains("spiffe://example.org/database"));
  // The client aborts before sending its certificate: the server never verified anyone.
  REQUIRE_FALSE(c.server.ok());
  CHECK(c.server.outcome().rejection == Rejection::kNone);
  CHECK_FALSE(c.server.outcome().verified);
  CHECK(c.server.failure().reason == "handshake_error");
  CHECK_THAT(c.server.failure().detail, Contains("TLS handshake failed: ") && Contains("alert"));
}

TEST_CASE("the server refuses a client whose SVID has expired") {
  PairSetup p;
  spiffe::CertSpec expired;
  expired.not_before_offset = -2h;
  expired.lifetime = 1h;
  p.client_svid = svid_of(p.pki.example, "spiffe://example.org/client", "", expired);
  Connection c = p.connect();
  REQUIRE_FALSE(c.server.ok());
  CHECK(c.server.outcome().rejection == Rejection::kExpired);
}

TEST_CASE("the server refuses a client that sends no certificate") {
  LoneServer s;
  // A plain OpenSSL client without a certificate, blocking on its own thread.
  const int fd = s.client.release();
  timeval limit{5, 0};
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &limit, sizeof(limit));
  ::setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &limit, sizeof(limit));
  std::thread anonymous([fd] {
    base::SslCtxPtr ctx(SSL_CTX_new(TLS_client_method()));
    SSL_CTX_set_verify(ctx.get(), SSL_VERIFY_NONE, nullptr);
    base::SslPtr ssl(SSL_new(ctx.get()));
    SSL_set_fd(ssl.get(), fd);
    if (SSL_connect(ssl.get()) == 1) {
      char byte;
      SSL_read(ssl.get(), &byte, 1);  // receives the server's alert
    }
    ERR_clear_error();
    ::close(fd);
  });
  s.run();
  anonymous.join();

  REQUIRE_FALSE(s.server.ok());
  CHECK(s.server.outcome().rejection == Rejection::kNoCertificate);
  CHECK_THAT(s.server.outcome().detail, Contains("no client certificate"));
  CHECK(s.server.failure().reason == spiffe::rejection_label(Rejection::kNoCertificate));
}

TEST_CASE("a client that speaks plain text fails the handshake with a TLS error") {
  LoneServer s;
  asio::write(s.client, asio::buffer(std::string_view("GET / HTTP/1.1\r\n\r\n")));
  s.run();
  REQUIRE_FALSE(s.server.ok());
  CHECK(s.server.outcome().rejection == Rejection::kNone);
  CHECK(s.server.failure().reason == "handshake_error");
  // OpenSSL's reason ("http request"), not only the socket's.
  CHECK_THAT(s.server.failure().detail, Contains("TLS handshake failed: ") &&
                                            Contains("SSL routines"));
}

TEST_CASE("a client that hangs up mid-handshake fails the handshake") {
  LoneServer s;
  s.client.close();
  s.run();
  REQUIRE_FALSE(s.server.ok());
  CHECK(s.server.failure().reason == "handshake_error");
  CHECK_THAT(s.server.failure().detail, Contains("TLS handshake failed: ") && Contains("peer"));
}

TEST_CASE("a closed handshake fails instead of waiting for the peer") {
  LoneServer s;
  spawn_handshake(s.io, s.server);
  s.io.poll();  // the server now waits for the ClientHello
  s.server.handshake->close();
  run_bounded(s.io);
  REQUIRE_FALSE(s.server.ok());
  CHECK(s.server.failure().reason == "handshake_error");
}

TEST_CASE("the provider has no context before the first snapshot") {
  identity::IdentityStore store;
  ContextProvider provider(options_for(Role::kServer, allow_any_verified()), store,
                           base::SystemClock::instance());
  auto c = provider.current();
  REQUIRE_FALSE(c.ok());
  CHECK_THAT(c.error().message, Contains("no identity held"));

  Pki pki;
  store.publish(snapshot_of({pki.server}, {&pki.example}));
  CHECK(provider.current().ok());
  store.withdraw();
  CHECK_FALSE(provider.current().ok());
}

TEST_CASE("the provider refuses a snapshot without the selected SVID") {
  Pki pki;
  auto snapshot = snapshot_of({pki.server, svid_of(pki.example, "spiffe://example.org/internal",
                                                   "internal")},
                              {&pki.example});

  SECTION("selected by SPIFFE ID") {
    auto opts = options_for(Role::kServer, allow_any_verified());
    opts.svid.id = id_of("spiffe://example.org/missing");
    Side side(opts, snapshot);
    auto c = side.provider->current();
    REQUIRE_FALSE(c.ok());
    CHECK_THAT(c.error().message, Contains("no SVID with SPIFFE ID spiffe://example.org/missing"));
    CHECK_THAT(c.error().message, Contains("spiffe://example.org/server"));
  }
  SECTION("selected by hint") {
    auto opts = options_for(Role::kServer, allow_any_verified());
    opts.svid.hint = "external";
    Side side(opts, snapshot);
    auto c = side.provider->current();
    REQUIRE_FALSE(c.ok());
    CHECK_THAT(c.error().message, Contains("no SVID with hint \"external\""));
  }
  SECTION("an empty snapshot") {
    Side side(options_for(Role::kServer, allow_any_verified()), snapshot_of({}, {&pki.example}));
    auto c = side.provider->current();
    REQUIRE_FALSE(c.ok());
    CHECK_THAT(c.error().message, Contains("holds no SVID"));
  }
}

TEST_CASE("the provider presents the SVID selected by ID, by hint, or the first") {
  Pki pki;
  auto internal = svid_of(pki.example, "spiffe://example.org/internal", "internal");
  auto snapshot = snapshot_of({pki.server, internal}, {&pki.example});

  auto by_id = options_for(Role::kServer, allow_any_verified());
  by_id.svid.id = id_of("spiffe://example.org/internal");
  CHECK(Side(by_id, snapshot).context()->svid().id.str() == "spiffe://example.org/internal");

  auto by_hint = options_for(Role::kServer, allow_any_verified());
  by_hint.svid.hint = "internal";
  CHECK(Side(by_hint, snapshot).context()->svid().id.str() == "spiffe://example.org/internal");

  auto first = options_for(Role::kServer, allow_any_verified());
  CHECK(Side(first, snapshot).context()->svid().id.str() == "spiffe://example.org/server");

  // The client sees the selected SVID's ID.
  Side server(by_hint, snapshot);
  Side client(options_for(Role::kClient, allow_any_verified()),
              snapshot_of({pki.client}, {&pki.example}));
  asio::io_context io;
  Connection c = handshake(io, client.context(), server.context());
  REQUIRE(c.client.ok());
  CHECK(c.client.stream->info().peer.peer_id->str() == "spiffe://example.org/internal");
}

TEST_CASE("the provider builds one context per snapshot") {
  Pki pki;
  Side side(options_for(Role::kServer, allow_any_verified()),
            snapshot_of({pki.server}, {&pki.example}));
  const ContextPtr first = side.context();
  CHECK(side.context() == first);
  CHECK(side.context() == first);
  CHECK(&first->snapshot() == side.store.current().get());

  side.store.publish(snapshot_of({svid_of(pki.example, "spiffe://example.org/server")},
                                 {&pki.example}));
  const ContextPtr second = side.context();
  CHECK(second != first);
  CHECK(side.context() == second);
  CHECK(&second->snapshot() == side.store.current().get());
  // The old context stays whole for whoever still holds it.
  CHECK(first->svid().id.str() == "spiffe://example.org/server");
  CHECK(first->ssl_ctx() != second->ssl_ctx());
}

TEST_CASE("a connection keeps the context it started with across a rotation") {
  GoodPair p;
  Connection c = p.connect();
  REQUIRE(c.server.ok());
  const TlsContext* before = c.server.stream->info().context.get();
  p.server_side->store.publish(snapshot_of(
      {svid_of(p.pki.example, "spiffe://example.org/server")}, {&p.pki.example}));
  CHECK(p.server_side->context().get() != before);
  CHECK(c.server.stream->info().context.get() == before);
}

TEST_CASE("TLS 1.2 is negotiated when the client allows no more") {
  PairSetup p;
  p.server.min_version = TLS1_2_VERSION;
  p.client.min_version = TLS1_2_VERSION;
  p.client.max_version = TLS1_2_VERSION;
  Connection c = p.connect();
  REQUIRE(c.client.ok());
  REQUIRE(c.server.ok());
  const tls::ConnectionInfo& client = c.client.stream->info();
  const tls::ConnectionInfo& server = c.server.stream->info();
  CHECK(client.protocol == "TLSv1.2");
  CHECK(server.protocol == "TLSv1.2");
  CHECK(server.peer.peer_id->str() == "spiffe://example.org/client");
  CHECK(client.peer.peer_id->str() == "spiffe://example.org/server");
  CHECK(client.cipher == "ECDHE-ECDSA-AES128-GCM-SHA256");
  // TLS 1.2 records stay with OpenSSL.
  CHECK(client.record_layer == RecordLayer::kOpenSsl);
  CHECK(server.record_layer == RecordLayer::kOpenSsl);
  CHECK(tls::record_layer_name(server.record_layer) == "openssl");
  asio::io_context& io = p.io;

  bool echoed = false;
  asio::co_spawn(
      io,
      [&]() -> asio::awaitable<void> {
        asio::error_code ec;
        co_await c.client.stream->write_all(std::string_view("ping"), ec);
        REQUIRE_FALSE(ec);
        const std::string got = co_await read_exactly(*c.server.stream, 4, ec);
        CHECK(got == "ping");
        CHECK_FALSE(ec);
        echoed = true;
      },
      rethrow);
  run_bounded(io);
  CHECK(echoed);
}

TEST_CASE("a TLS 1.3-only server refuses a TLS 1.2-only client") {
  PairSetup p;
  p.client.min_version = TLS1_2_VERSION;
  p.client.max_version = TLS1_2_VERSION;
  Connection c = p.connect();
  CHECK_FALSE(c.server.ok());
  CHECK_FALSE(c.client.ok());
  CHECK(c.server.failure().reason == "handshake_error");
  CHECK_THAT(c.server.failure().detail, Contains("unsupported protocol"));
}

TEST_CASE("pinned cipher suites are the ones negotiated") {
  Pki pki;
  PairSetup p;
  SECTION("TLS 1.3") {
    p.server.tls13_ciphersuites = "TLS_CHACHA20_POLY1305_SHA256";
    Connection c = p.connect();
    REQUIRE(c.server.ok());
    REQUIRE(c.client.ok());
    CHECK(c.server.stream->info().cipher == "TLS_CHACHA20_POLY1305_SHA256");
    CHECK(c.client.stream->info().cipher == "TLS_CHACHA20_POLY1305_SHA256");
  }
  SECTION("TLS 1.2") {
    p.server.min_version = p.server.max_version = TLS1_2_VERSION;
    p.server.tls12_ciphers = "ECDHE-ECDSA-AES256-GCM-SHA384";
    p.client.min_version = TLS1_2_VERSION;
    Connection c = p.connect();
    REQUIRE(c.server.ok());
    REQUIRE(c.client.ok());
    CHECK(c.server.stream->info().protocol == "TLSv1.2");
    CHECK(c.client.stream->info().cipher == "ECDHE-ECDSA-AES256-GCM-SHA384");
  }
  SECTION("no suite in common") {
    p.server.tls13_ciphersuites = "TLS_AES_256_GCM_SHA384";
    p.client.tls13_ciphersuites = "TLS_CHACHA20_POLY1305_SHA256";
    Connection c = p.connect();
    CHECK_FALSE(c.server.ok());
    CHECK_FALSE(c.client.ok());
    CHECK_THAT(c.server.failure().detail, Contains("shared cipher"));
    CHECK(c.server.failure().reason == "handshake_error");
    CHECK(c.server.outcome().rejection == Rejection::kNone);
  }
}

TEST_CASE("unusable cipher settings make the provider fail with the setting named") {
  Pki pki;
  auto bad13 = options_for(Role::kServer, allow_any_verified());
  bad13.tls13_ciphersuites = "TLS_NOT_A_SUITE";
  auto c13 = Side(bad13, snapshot_of({pki.server}, {&pki.example})).provider->current();
  REQUIRE_FALSE(c13.ok());
  CHECK_THAT(c13.error().message, Contains("TLS 1.3 cipher suites \"TLS_NOT_A_SUITE\""));

  auto bad12 = options_for(Role::kServer, allow_any_verified());
  bad12.tls12_ciphers = "NOT-A-CIPHER";
  auto c12 = Side(bad12, snapshot_of({pki.server}, {&pki.example})).provider->current();
  REQUIRE_FALSE(c12.ok());
  CHECK_THAT(c12.error().message, Contains("TLS 1.2 ciphers \"NOT-A-CIPHER\""));
}

TEST_CASE("parse_tls_version accepts 1.2 and 1.3 in their usual spellings") {
  CHECK(*tls::parse_tls_version("1.2") == TLS1_2_VERSION);
  CHECK(*tls::parse_tls_version("TLSv1.2") == TLS1_2_VERSION);
  CHECK(*tls::parse_tls_version("tls1.3") == TLS1_3_VERSION);
  CHECK(*tls::parse_tls_version("1.3") == TLS1_3_VERSION);
  auto bad = tls::parse_tls_version("1.1");
  REQUIRE_FALSE(bad.ok());
  CHECK_THAT(bad.error().message, Contains("\"1.1\" is not a TLS version"));
}
