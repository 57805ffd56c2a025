#pragma once
// TLS test helpers on top of test_tls.h: one side's identity and context provider, and a client
// and a server TlsStream handshaking over loopback. For the tls module's tests.

#include <asio/co_spawn.hpp>
#include <asio/io_context.hpp>

#include <memory>

#include <catch2/catch.hpp>

#include "spiffe_tunnel/base/clock.h"
#include "spiffe_tunnel/identity/identity_store.h"
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

// Both ends of one loopback connection after their handshakes ran concurrently.
struct Connection {
  std::unique_ptr<TlsStream> client;
  std::unique_ptr<TlsStream> server;
  asio::error_code client_ec;
  asio::error_code server_ec;
};

inline Connection handshake(asio::io_context& io, std::shared_ptr<const TlsContext> client_ctx,
                            std::shared_ptr<const TlsContext> server_ctx) {
  auto [client_sock, server_sock] = connected_pair(io);
  Connection c;
  auto client = TlsStream::create(std::move(client_sock), std::move(client_ctx));
  auto server = TlsStream::create(std::move(server_sock), std::move(server_ctx));
  REQUIRE(client.ok());
  REQUIRE(server.ok());
  c.client = std::move(*client);
  c.server = std::move(*server);
  asio::co_spawn(io, c.client->handshake(c.client_ec), rethrow);
  asio::co_spawn(io, c.server->handshake(c.server_ec), rethrow);
  run_bounded(io);
  return c;
}

}  // namespace spiffe_tunnel::tls::testing
