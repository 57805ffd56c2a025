#include "tunnel/session_validity.h"

#include <chrono>
#include <memory>

#include <catch2/catch.hpp>

#include "tls/test_tls.h"

using namespace std::chrono_literals;
using namespace spiffe_tunnel;
using namespace spiffe_tunnel::tls::testing;
using Catch::Matchers::Contains;
using spiffe::testing::make_intermediate;
using tunnel::EndReason;
using Clock = std::chrono::system_clock;

namespace {

// A peer's chain as the handshake would keep it: leaf and intermediates, verified against
// `bundles`.
std::shared_ptr<const tls::VerifiedChain> chain_of(const spiffe::X509Svid& svid,
                                                   const spiffe::BundleSet& bundles) {
  base::X509StackPtr rest(sk_X509_new_null());
  for (std::size_t i = 1; i < svid.chain.size(); ++i) {
    sk_X509_push(rest.get(), base::share(svid.chain[i].get()).release());
  }
  return tls::VerifiedChain::capture(svid.leaf(), rest.get(), spiffe::VerifyParams{}, bundles);
}

struct World {
  spiffe::Issuer ca_a = make_root("a.test");
  spiffe::Issuer ca_b = make_root("b.test");
  // The own SVID outlives the peer's, so that the peer's notAfter comes first.
  std::shared_ptr<const spiffe::X509Svid> local =
      svid_of(ca_b, "spiffe://b.test/server", {}, spiffe::CertSpec{.lifetime = 7200s});
  spiffe::X509Svid peer = make_svid(ca_a, "spiffe://a.test/alice");
  std::shared_ptr<const identity::Snapshot> now_held = snapshot_of({local}, {&ca_a, &ca_b});
  std::shared_ptr<const tls::VerifiedChain> chain = chain_of(peer, now_held->bundles);
  spiffe::SpiffeId local_id = local->id;

  tunnel::SessionFacts facts(std::optional<std::chrono::milliseconds> age = std::nullopt) const {
    return {chain.get(), &local_id, Clock::now() - 1s, age};
  }
};

}  // namespace

TEST_CASE("a session whose peer and own identity are valid goes on until the chain's notAfter") {
  World w;
  const auto v = tunnel::check_session(w.facts(), w.now_held.get(), Clock::now());
  CHECK(v.ok());
  CHECK(v.next_check == w.chain->not_after());
  CHECK(w.chain->not_after() == w.peer.not_after());
}

TEST_CASE("the kept chain's notAfter includes the intermediates and the issuing root") {
  World w;
  const spiffe::Issuer short_root =
      spiffe::Issuer::create_root(td_of("c.test"), std::chrono::seconds(600)).value();
  const spiffe::Issuer mid = make_intermediate(short_root);
  const spiffe::X509Svid peer = make_svid(mid, "spiffe://c.test/carol");
  const auto held = snapshot_of({w.local}, {&short_root, &w.ca_b});
  const auto chain = chain_of(peer, held->bundles);
  CHECK(chain->not_after() < peer.not_after());
  CHECK(chain->not_after() <= Clock::now() + 600s);
  CHECK(chain->verify(held->bundles, Clock::now()).ok());
}

TEST_CASE("sessions of one peer share the kept chain; another chain or level gets its own") {
  World w;
  const auto again = chain_of(w.peer, w.now_held->bundles);
  CHECK(again == w.chain);  // the same object: one copy however many sessions the peer opens
  const spiffe::X509Svid other = make_svid(w.ca_a, "spiffe://a.test/bob");
  const auto bob = chain_of(other, w.now_held->bundles);
  CHECK(bob != w.chain);
  CHECK(bob->verify(w.now_held->bundles, Clock::now()).id->str() == "spiffe://a.test/bob");
  base::X509StackPtr none(sk_X509_new_null());
  const auto stricter = tls::VerifiedChain::capture(
      w.peer.leaf(), none.get(), spiffe::VerifyParams{.security_level = 3}, w.now_held->bundles);
  CHECK(stricter != w.chain);
  CHECK(stricter->params().security_level == 3);
}

TEST_CASE("a peer whose chain reaches notAfter ends with peer_expired") {
  World w;
  const auto v = tunnel::check_session(w.facts(), w.now_held.get(), w.chain->not_after());
  CHECK(v.reason == EndReason::kPeerExpired);
  CHECK(tunnel::end_reason_label(v.reason) == "peer_expired");
  CHECK(tunnel::check_session(w.facts(), w.now_held.get(), w.chain->not_after() - 1s).ok());
}

TEST_CASE("a bundle rotation that drops the peer's CA ends it with peer_untrusted") {
  World w;
  const spiffe::Issuer rotated = make_root("a.test");
  const auto v = tunnel::check_session(w.facts(), snapshot_of({w.local}, {&rotated, &w.ca_b}).get(),
                                       Clock::now());
  CHECK(v.reason == EndReason::kPeerUntrusted);
  CHECK_THAT(v.detail, Contains("a.test"));
}

TEST_CASE("against the snapshot the handshake verified with, only the chain's times count") {
  World w;
  const spiffe::Issuer rotated = make_root("a.test");
  const auto other = snapshot_of({w.local}, {&rotated, &w.ca_b});
  tunnel::SessionFacts facts = w.facts();
  // Verified with `other`, whose bundles would not verify the chain again: not repeated.
  facts.verified_with = other.get();
  CHECK(tunnel::check_session(facts, other.get(), Clock::now()).ok());
  // Any other snapshot is verified against.
  facts.verified_with = w.now_held.get();
  CHECK(tunnel::check_session(facts, other.get(), Clock::now()).reason ==
        EndReason::kPeerUntrusted);
  // The chain's notAfter still ends the session.
  facts.verified_with = other.get();
  CHECK(tunnel::check_session(facts, other.get(), w.chain->not_after() + 1s).reason ==
        EndReason::kPeerExpired);
}

TEST_CASE("a trust domain dropped from federation ends its peers with peer_untrusted") {
  World w;
  const auto v =
      tunnel::check_session(w.facts(), snapshot_of({w.local}, {&w.ca_b}).get(), Clock::now());
  CHECK(v.reason == EndReason::kPeerUntrusted);
}

TEST_CASE("a rotation of the own SVID to a new one of the same ID keeps the session") {
  World w;
  const auto renewed = svid_of(w.ca_b, "spiffe://b.test/server");
  const auto v = tunnel::check_session(w.facts(), snapshot_of({renewed}, {&w.ca_a, &w.ca_b}).get(),
                                       Clock::now());
  CHECK(v.ok());
}

TEST_CASE("the own SVID withdrawn or gone from the snapshot ends with local_identity_lost") {
  World w;
  const auto facts = w.facts();
  CHECK(tunnel::check_session(facts, nullptr, Clock::now()).reason ==
        EndReason::kLocalIdentityLost);
  const auto other = svid_of(w.ca_b, "spiffe://b.test/other");
  const auto gone = tunnel::check_session(facts, snapshot_of({other}, {&w.ca_a, &w.ca_b}).get(),
                                          Clock::now());
  CHECK(gone.reason == EndReason::kLocalIdentityLost);
  CHECK_THAT(gone.detail, Contains("spiffe://b.test/server"));
}

TEST_CASE("an own SVID that expires without a replacement ends with local_identity_lost") {
  World w;
  spiffe::CertSpec brief;
  brief.lifetime = 600s;
  const auto soon = svid_of(w.ca_b, "spiffe://b.test/server", {}, brief);
  const auto held = snapshot_of({soon}, {&w.ca_a, &w.ca_b});
  const auto facts = w.facts();
  const auto v = tunnel::check_session(facts, held.get(), Clock::now());
  REQUIRE(v.ok());
  CHECK(v.next_check == soon->not_after());
  // The store still holds it past its notAfter: no renewal came.
  CHECK(tunnel::check_session(facts, held.get(), soon->not_after()).reason ==
        EndReason::kLocalIdentityLost);
}

TEST_CASE("max_connection_age ends a session at accept plus the age, and is the next check") {
  World w;
  const auto facts = w.facts(2000ms);
  const auto v = tunnel::check_session(facts, w.now_held.get(), facts.accepted + 1s);
  CHECK(v.ok());
  CHECK(v.next_check == facts.accepted + 2s);
  const auto end = tunnel::check_session(facts, w.now_held.get(), facts.accepted + 2s);
  CHECK(end.reason == EndReason::kMaxConnectionAge);
  CHECK(tunnel::end_reason_label(end.reason) == "max_connection_age");
}
