#include "spiffe_tunnel/identity/readiness.h"

#include <memory>
#include <string>

#include <catch2/catch.hpp>

#include "spiffe/test_pki.h"

using namespace spiffe_tunnel;
using namespace spiffe_tunnel::spiffe::testing;
using Catch::Matchers::Equals;

namespace {

spiffe::TrustDomain td(const char* name) { return *spiffe::TrustDomain::parse(name); }

// Two SVIDs of a.test (the second with hint "internal") and the bundles of a.test and b.test.
identity::Snapshot two_svids(const spiffe::Issuer& a, const spiffe::Issuer& b) {
  identity::Snapshot s;
  s.svids.push_back(std::make_shared<const spiffe::X509Svid>(make_svid(a, "spiffe://a.test/web")));
  auto api = make_svid(a, "spiffe://a.test/api");
  api.hint = "internal";
  s.svids.push_back(std::make_shared<const spiffe::X509Svid>(std::move(api)));
  s.bundles = bundle_set_of({&a, &b});
  return s;
}

}  // namespace

TEST_CASE("ready: the default SVID with its own trust domain's bundle") {
  const auto a = make_root("a.test");
  const auto b = make_root("b.test");
  auto got = identity::check_ready(two_svids(a, b), {});
  REQUIRE(got.ok());
  CHECK((*got)->id.str() == "spiffe://a.test/web");
}

TEST_CASE("ready: the SVID asked for by ID or hint, and every bundle named") {
  const auto a = make_root("a.test");
  const auto b = make_root("b.test");
  const auto snap = two_svids(a, b);
  identity::ReadinessRequirement by_hint{{std::nullopt, "internal"}, {td("a.test"), td("b.test")}};
  auto got = identity::check_ready(snap, by_hint);
  REQUIRE(got.ok());
  CHECK((*got)->id.str() == "spiffe://a.test/api");
}

TEST_CASE("not ready: names the SVID wanted and lists those held") {
  const auto a = make_root("a.test");
  const auto b = make_root("b.test");
  identity::ReadinessRequirement want{{*spiffe::SpiffeId::parse("spiffe://a.test/db"), {}}, {}};
  auto got = identity::check_ready(two_svids(a, b), want);
  REQUIRE_FALSE(got.ok());
  CHECK_THAT(got.error().message,
             Equals("no SVID with SPIFFE ID spiffe://a.test/db is held; the identity source "
                    "has: spiffe://a.test/web, spiffe://a.test/api (hint internal)"));
  CHECK_THAT(identity::check_ready(identity::Snapshot{}, {}).error().message,
             Equals("the identity source holds no SVID"));
}

TEST_CASE("not ready: names the missing bundle and lists the trust domains held") {
  const auto a = make_root("a.test");
  const auto b = make_root("b.test");
  identity::ReadinessRequirement want{{}, {td("b.test"), td("c.test")}};
  auto got = identity::check_ready(two_svids(a, b), want);
  REQUIRE_FALSE(got.ok());
  CHECK_THAT(got.error().message,
             Equals("no bundle for trust domain c.test; bundles held: a.test, b.test"));
}
