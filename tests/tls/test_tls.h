#pragma once
// Helpers shared by the tls and tunnel tests: identity snapshots built from throwaway PKIs,
// authorizers, connected loopback socket pairs, and a bounded io_context run so that a hang fails
// the test instead of blocking it. Every helper fails the running test (REQUIRE) instead of
// returning an error.

#include <signal.h>

#include <asio/co_spawn.hpp>
#include <asio/io_context.hpp>
#include <asio/ip/tcp.hpp>

#include <chrono>
#include <exception>
#include <initializer_list>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <catch2/catch.hpp>

#include "spiffe/test_pki.h"
#include "spiffe_tunnel/identity/snapshot.h"
#include "spiffe_tunnel/policy/authorizer.h"

namespace spiffe_tunnel::tls::testing {

// The daemon ignores SIGPIPE (app/daemon.cc) because OpenSSL writes to its sockets with write(),
// which raises it when the peer has gone; test binaries that drive TLS must do the same.
inline const bool kSigpipeIgnored = [] {
  ::signal(SIGPIPE, SIG_IGN);
  return true;
}();

using spiffe::testing::id_of;
using spiffe::testing::make_root;
using spiffe::testing::make_svid;
using spiffe::testing::td_of;

inline std::shared_ptr<const spiffe::X509Svid> svid_of(const spiffe::Issuer& issuer,
                                                       std::string_view id, std::string hint = {},
                                                       spiffe::CertSpec spec = {}) {
  auto svid = std::make_shared<spiffe::X509Svid>(make_svid(issuer, id, std::move(spec)));
  svid->hint = std::move(hint);
  return svid;
}

// A snapshot holding `svids` (the first is the default) and the bundles of `roots`.
inline std::shared_ptr<const identity::Snapshot> snapshot_of(
    std::vector<std::shared_ptr<const spiffe::X509Svid>> svids,
    std::initializer_list<const spiffe::Issuer*> roots) {
  auto s = std::make_shared<identity::Snapshot>();
  s->svids = std::move(svids);
  s->bundles = spiffe::testing::bundle_set_of(roots);
  s->source = "test";
  return s;
}

inline std::shared_ptr<const policy::Authorizer> allow_ids(
    std::initializer_list<std::string_view> ids) {
  std::vector<spiffe::SpiffeId> parsed;
  for (auto id : ids) {
    parsed.push_back(id_of(id));
  }
  return std::make_shared<policy::AllowListAuthorizer>(std::move(parsed),
                                                       std::vector<spiffe::TrustDomain>{},
                                                       std::vector<spiffe::IdPattern>{});
}

inline std::shared_ptr<const policy::Authorizer> allow_any_verified() {
  return std::make_shared<policy::AllowListAuthorizer>(std::vector<spiffe::SpiffeId>{},
                                                       std::vector<spiffe::TrustDomain>{},
                                                       std::vector<spiffe::IdPattern>{}, true);
}

// Two TCP sockets on `io`, connected to each other over loopback: {client end, server end}.
inline std::pair<asio::ip::tcp::socket, asio::ip::tcp::socket> connected_pair(
    asio::io_context& io) {
  asio::ip::tcp::acceptor acceptor(io, {asio::ip::address_v4::loopback(), 0});
  asio::ip::tcp::socket client(io);
  client.connect(acceptor.local_endpoint());
  asio::ip::tcp::socket server = acceptor.accept();
  return {std::move(client), std::move(server)};
}

// Rethrows what a spawned coroutine threw (a failed REQUIRE included) out of io_context::run.
inline void rethrow(std::exception_ptr e) {
  if (e) {
    std::rethrow_exception(e);
  }
}

// Runs `io` until it runs out of work; fails the test if that takes longer than `limit`.
inline void run_bounded(asio::io_context& io,
                        std::chrono::milliseconds limit = std::chrono::seconds(10)) {
  io.run_for(limit);
  INFO("the io_context still had work after " << limit.count() << "ms: something hangs");
  REQUIRE(io.stopped());
  io.restart();
}

}  // namespace spiffe_tunnel::tls::testing
