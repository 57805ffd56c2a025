#pragma once
// TLS test fixtures on top of test_tls.h: one side's identity and context provider, a test PKI,
// and client and server handshakes over loopback, each end either an established TlsStream or
// the Handshake that failed. For the tls module's tests.

#include <asio/co_spawn.hpp>
#include <asio/io_context.hpp>

#include <memory>
#include <optional>

#include <catch2/catch.hpp>

#include "spiffe_tunnel/base/clock.h"
#include "spiffe_tunnel/identity/identity_store.h"
#include "spiffe_tunnel/tls/handshake.h"
#include "spiffe_tunnel/tls/tls_context.h"
#include "spiffe_tunnel/tls/tls_stream.h"
#include "tls/test_tls.h"

namespace spiffe_tunnel::tls::testing {

// One side's identity and TLS settings: a store with one snapshot and a provider over it.
struct Side {
  identity::IdentityStore store;
  std::unique_ptr<ContextProvider> provider;

  Side(TlsOptions options, std::shared_ptr<const identity::Snapshot> snapshot) {
    if (snapshot) {
      store.publish(std::move(snapshot));
    }
    provider = std::make_unique<ContextProvider>(std::move(options), store,
                                                 base::SystemClock::instance());
  }

  std::shared_ptr<const TlsContext> context() {
    auto c = provider->current();
    INFO((c.ok() ? "" : c.error().message));
    REQUIRE(c.ok());
    return *c;
  }
};

inline TlsOptions options_for(Role role, std::shared_ptr<const policy::Authorizer> authorizer) {
  TlsOptions o;
  o.role = role;
  o.authorizer = std::move(authorizer);
  return o;
}

// Two trust domains and a workload identity in each.
struct Pki {
  spiffe::Issuer example = make_root("example.org");
  spiffe::Issuer other = make_root("other.org");
  std::shared_ptr<const spiffe::X509Svid> server = svid_of(example, "spiffe://example.org/server");
  std::shared_ptr<const spiffe::X509Svid> client = svid_of(example, "spiffe://example.org/client");
  std::shared_ptr<const spiffe::X509Svid> stranger = svid_of(other, "spiffe://other.org/client");
};

// A handshake over `socket` with `context`; fails the test if it cannot be set up.
inline std::unique_ptr<Handshake> handshake_on(asio::ip::tcp::socket socket,
                                               std::shared_ptr<const TlsContext> context) {
  auto h = Handshake::create(std::move(socket), std::move(context));
  INFO((h.ok() ? "" : h.error().message));
  REQUIRE(h.ok());
  return std::move(*h);
}

// One end of a connection after its handshake ran: the established stream, or (stream null) the
// handshake that failed, with its failure().
struct End {
  std::unique_ptr<Handshake> handshake;
  std::unique_ptr<TlsStream> stream;

  bool ok() const { return stream != nullptr; }
  const PeerOutcome& outcome() const {
    return stream ? stream->info().peer : handshake->outcome();
  }
  const Handshake::Failure& failure() const { return handshake->failure(); }
};

// Spawns `end`'s handshake on `io`; the stream lands in end.stream when the caller runs `io`.
inline void spawn_handshake(asio::io_context& io, End& end) {
  asio::co_spawn(
      io, [&end]() -> asio::awaitable<void> { end.stream = co_await end.handshake->run(); },
      rethrow);
}

// Both ends of one loopback connection after their handshakes ran concurrently.
struct Connection {
  End client;
  End server;
};

inline Connection handshake(asio::io_context& io, std::shared_ptr<const TlsContext> client_ctx,
                            std::shared_ptr<const TlsContext> server_ctx) {
  auto [client_sock, server_sock] = connected_pair(io);
  Connection c;
  c.client.handshake = handshake_on(std::move(client_sock), std::move(client_ctx));
  c.server.handshake = handshake_on(std::move(server_sock), std::move(server_ctx));
  spawn_handshake(io, c.client);
  spawn_handshake(io, c.server);
  run_bounded(io);
  return c;
}

// A server and a client in example.org that accept any verified peer. A test adjusts the
// options and identities, then connect() builds both sides and runs one handshake over loopback.
struct PairSetup {
  Pki pki;
  TlsOptions server = options_for(Role::kServer, allow_any_verified());
  TlsOptions client = options_for(Role::kClient, allow_any_verified());
  std::shared_ptr<const spiffe::X509Svid> server_svid = pki.server;
  std::shared_ptr<const spiffe::X509Svid> client_svid = pki.client;
  bool client_trusts_other_org = false;  // the client holds other.org's bundle too
  asio::io_context io;
  std::optional<Side> server_side;  // built by connect()
  std::optional<Side> client_side;

  Connection connect() {
    server_side.emplace(server, snapshot_of({server_svid}, {&pki.example}));
    client_side.emplace(client, client_trusts_other_org
                                    ? snapshot_of({client_svid}, {&pki.example, &pki.other})
                                    : snapshot_of({client_svid}, {&pki.example}));
    return handshake(io, client_side->context(), server_side->context());
  }
};

// A server end alone over loopback, before its handshake; the test plays the client on `client`.
struct LoneServer {
  Pki pki;
  Side side{options_for(Role::kServer, allow_any_verified()),
            snapshot_of({pki.server}, {&pki.example})};
  asio::io_context io;
  asio::ip::tcp::socket client{io};
  End server;

  LoneServer() {
    auto [c, s] = connected_pair(io);
    client = std::move(c);
    server.handshake = handshake_on(std::move(s), side.context());
  }

  // Runs the server's handshake to its end.
  void run() {
    spawn_handshake(io, server);
    run_bounded(io);
  }
};

}  // namespace spiffe_tunnel::tls::testing
