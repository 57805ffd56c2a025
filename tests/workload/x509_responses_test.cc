#include "workload/x509_responses.h"

#include <string>

#include <catch2/catch.hpp>

#include "spiffe/test_pki.h"
#include "workload/source_test_support.h"

using namespace spiffe_tunnel;
using namespace spiffe_tunnel::spiffe::testing;
using namespace spiffe_tunnel::workload::testing;
using Catch::Matchers::Contains;

namespace {

// The reason parsing `r` fails with; fails the test if it parses.
std::string rejection_of(const X509SVIDResponse& r) {
  auto parsed = workload::parse_x509_svid_response(r);
  REQUIRE_FALSE(parsed.ok());
  return parsed.error().message;
}

std::string rejection_of(const X509BundlesResponse& r) {
  auto parsed = workload::parse_x509_bundles_response(r);
  REQUIRE_FALSE(parsed.ok());
  return parsed.error().message;
}

}  // namespace

// --- FetchX509SVID -------------------------------------------------------------------------------

TEST_CASE("a response is parsed whole or rejected with the entry and reason") {
  Agent agent;
  SECTION("key of another SVID") {
    X509SVIDResponse r = agent.response_for(agent.web);
    r.mutable_svids(0)->set_x509_svid_key(pkcs8_der_of(agent.db.key.get()));
    CHECK_THAT(rejection_of(r), Contains("SVID #1 (spiffe://a.test/web)"));
  }
  SECTION("spiffe_id that is not the certificate's") {
    X509SVIDResponse r = agent.response_for(agent.web);
    r.mutable_svids(0)->set_spiffe_id("spiffe://a.test/db");
    CHECK_THAT(rejection_of(r), Contains("holds spiffe://a.test/web"));
  }
  SECTION("empty own bundle") {
    X509SVIDResponse r = agent.response_for(agent.web);
    r.mutable_svids(0)->clear_bundle();
    CHECK_THAT(rejection_of(r), Contains("mandatory field"));
  }
  SECTION("federated key that is not a trust domain") {
    X509SVIDResponse r = agent.response_for(agent.web);
    (*r.mutable_federated_bundles())["spiffe://Bad.TD"] = der_of(agent.root.certificate());
    CHECK_THAT(rejection_of(r), Contains("federated bundle key \"spiffe://Bad.TD\""));
  }
  SECTION("garbage federated bundle") {
    X509SVIDResponse r = agent.response_for(agent.web);
    (*r.mutable_federated_bundles())["spiffe://b.test"] = "\x30\x03junk";
    CHECK_THAT(rejection_of(r), Contains("federated bundle for b.test"));
  }
}

TEST_CASE("a response keys each bundle by its trust domain, federated ones last") {
  Agent agent;
  const spiffe::Issuer root_b = make_root("b.test");
  X509SVIDResponse r = agent.response_for(agent.web);
  (*r.mutable_federated_bundles())["spiffe://b.test"] = der_of(root_b.certificate());
  auto message = workload::parse_x509_svid_response(r);
  INFO((message ? "" : message.error().message));
  REQUIRE(message.ok());
  REQUIRE(message->bundles.size() == 2);
  for (const auto& [td, bundle] : message->bundles) {
    CHECK(td == bundle->trust_domain());
  }
  CHECK(message->bundles.count(td_of("a.test")) == 1);
  CHECK(message->bundles.count(td_of("b.test")) == 1);
}

// --- FetchX509Bundles ----------------------------------------------------------------------------

TEST_CASE("a bundles response maps each key, spiffe://td or td, to its trust domain") {
  const spiffe::Issuer root_a = make_root("a.test");
  const spiffe::Issuer root_a2 = make_root("a.test");
  const spiffe::Issuer root_b = make_root("b.test");
  X509BundlesResponse r = bundles_response(
      {{"spiffe://a.test", {&root_a, &root_a2}}, {"b.test", {&root_b}}, {"spiffe://c.test", {}}});
  auto bundles = workload::parse_x509_bundles_response(r);
  INFO((bundles ? "" : bundles.error().message));
  REQUIRE(bundles.ok());
  REQUIRE(bundles->size() == 3);
  CHECK(bundles->at(td_of("a.test"))->authorities().size() == 2);
  CHECK(X509_cmp(bundles->at(td_of("b.test"))->authorities()[0].get(), root_b.certificate()) ==
        0);
  CHECK(bundles->at(td_of("c.test"))->authorities().empty());  // legal: trusts nothing
  for (const auto& [td, bundle] : *bundles) {
    CHECK(td == bundle->trust_domain());
  }
}

TEST_CASE("a bundles response is parsed whole or rejected with the entry and reason") {
  const spiffe::Issuer root_a = make_root("a.test");
  X509BundlesResponse r = bundles_response({{"spiffe://a.test", {&root_a}}});
  SECTION("no bundle at all, not even the agent's own trust domain") {
    r.clear_bundles();
    CHECK_THAT(rejection_of(r), Contains("holds no bundle"));
  }
  SECTION("key that is not a trust domain") {
    (*r.mutable_bundles())["spiffe://Bad.TD"] = der_of(root_a.certificate());
    CHECK_THAT(rejection_of(r), Contains("bundle key \"spiffe://Bad.TD\""));
  }
  SECTION("garbage DER") {
    (*r.mutable_bundles())["spiffe://b.test"] = "\x30\x03junk";
    CHECK_THAT(rejection_of(r), Contains("bundle for b.test"));
  }
}
