// OpaClient's decision cache: what a cached decision is an answer for.

#include "spiffe_tunnel/policy/opa_client.h"

#include <catch2/catch.hpp>

using namespace spiffe_tunnel;

namespace {

spiffe::SpiffeId id(std::string_view text) {
  auto parsed = spiffe::SpiffeId::parse(text);
  REQUIRE(parsed.ok());
  return *parsed;
}

}  // namespace

TEST_CASE("a cached OPA decision is keyed by every field of the policy's input") {
  const policy::OpaInput base{.tunnel = "kafka-in",
                              .mode = "server",
                              .peer = id("spiffe://b.test/producer"),
                              .local_id = "spiffe://a.test/kafka"};
  const std::string key = policy::decision_cache_key(base);
  CHECK(policy::decision_cache_key(base) == key);

  policy::OpaInput rotated = base;  // the tunnel now presents another SVID
  rotated.local_id = "spiffe://a.test/kafka-v2";
  CHECK(policy::decision_cache_key(rotated) != key);

  policy::OpaInput client = base;
  client.mode = "client";
  CHECK(policy::decision_cache_key(client) != key);

  policy::OpaInput other_peer = base;
  other_peer.peer = id("spiffe://b.test/consumer");
  CHECK(policy::decision_cache_key(other_peer) != key);

  policy::OpaInput other_tunnel = base;
  other_tunnel.tunnel = "kafka-out";
  CHECK(policy::decision_cache_key(other_tunnel) != key);
}
