#include "workload/x509_context_merger.h"

#include <initializer_list>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <catch2/catch.hpp>

#include "spiffe/test_pki.h"
#include "workload/source_test_support.h"

using namespace spiffe_tunnel;
using namespace spiffe_tunnel::spiffe::testing;
using namespace spiffe_tunnel::workload::testing;
using workload::BundleMap;
using workload::X509ContextMerger;
using workload::X509SvidMessage;

namespace {

std::shared_ptr<const spiffe::Bundle> bundle_of(std::string_view td,
                                                const std::vector<const spiffe::Issuer*>& cas) {
  std::vector<base::X509Ptr> certs;
  for (const auto* ca : cas) {
    certs.push_back(base::share(ca->certificate()));
  }
  return std::make_shared<const spiffe::Bundle>(td_of(td), std::move(certs));
}

// A BundleMap from trust domain names to the certificates of their issuers:
// bundles({{"a.test", {&w.a1}}, {"b.test", {&w.b}}}).
BundleMap bundles(
    std::initializer_list<std::pair<std::string_view, std::vector<const spiffe::Issuer*>>> tds) {
  BundleMap map;
  for (const auto& [td, cas] : tds) {
    map[td_of(td)] = bundle_of(td, cas);
  }
  return map;
}

// A small world: trust domain a.test with two generations of root (a1, a2), and federated
// trust domains b.test and c.test.
struct World {
  spiffe::Issuer a1 = make_root("a.test");
  spiffe::Issuer a2 = make_root("a.test");
  spiffe::Issuer b = make_root("b.test");
  spiffe::Issuer c = make_root("c.test");
  std::shared_ptr<const spiffe::X509Svid> web =
      std::make_shared<const spiffe::X509Svid>(make_svid(a1, "spiffe://a.test/web"));

  // A FetchX509SVID message: the web SVID, a.test's bundle `own`, plus `federated`.
  X509SvidMessage svids(const spiffe::Issuer& own, BundleMap federated = {}) const {
    X509SvidMessage m;
    m.svids = {web};
    m.bundles = std::move(federated);
    m.bundles[td_of("a.test")] = bundle_of("a.test", {&own});
    return m;
  }
};

}  // namespace

TEST_CASE("merger holds bundles until the first SVID, then publishes both") {
  World w;
  X509ContextMerger merger;
  CHECK_FALSE(merger.take_bundles(bundles({{"b.test", {&w.b}}})));
  CHECK_FALSE(merger.has_svids());
  const auto ctx = merger.take_svids(w.svids(w.a1));
  REQUIRE(ctx);
  CHECK(trust_domains_of(*ctx) == "a.test,b.test");
  REQUIRE(ctx->svids.size() == 1);
  CHECK(leaf_id(*ctx) == "spiffe://a.test/web");
}

TEST_CASE("merger publishes only changes, not repeats") {
  World w;
  X509ContextMerger merger;
  REQUIRE(merger.take_svids(w.svids(w.a1)));
  // The same content again, e.g. parsed anew after a reconnect.
  CHECK_FALSE(merger.take_svids(w.svids(w.a1)));
  // FetchX509Bundles saying what FetchX509SVID already said changes nothing.
  CHECK_FALSE(merger.take_bundles(bundles({{"a.test", {&w.a1}}})));
  CHECK_FALSE(merger.take_bundles(bundles({{"a.test", {&w.a1}}})));
  const auto ctx = merger.take_bundles(bundles({{"a.test", {&w.a1}},
                                        {"b.test", {&w.b}}}));
  REQUIRE(ctx);
  CHECK(trust_domains_of(*ctx) == "a.test,b.test");
}

TEST_CASE("merger: for a trust domain both streams name, the newest change wins") {
  World w;
  X509ContextMerger merger;
  REQUIRE(merger.take_svids(w.svids(w.a1)));

  // FetchX509Bundles delivers a rotated root before FetchX509SVID does.
  auto ctx = merger.take_bundles(bundles({{"a.test", {&w.a1, &w.a2}}}));
  REQUIRE(ctx);
  CHECK(bundle_is(*ctx, "a.test", {&w.a1, &w.a2}));

  // FetchX509SVID then changes a.test again (the old root is gone): it is newer, so it wins.
  ctx = merger.take_svids(w.svids(w.a2));
  REQUIRE(ctx);
  CHECK(bundle_is(*ctx, "a.test", {&w.a2}));

  // A repeat of the older FetchX509Bundles message (a reconnect) is not a change.
  CHECK_FALSE(merger.take_bundles(bundles({{"a.test", {&w.a1, &w.a2}}})));

  // A new FetchX509Bundles message is newer again.
  ctx = merger.take_bundles(bundles({{"a.test", {&w.a2, &w.a1}}}));
  REQUIRE(ctx);
  CHECK(bundle_is(*ctx, "a.test", {&w.a2, &w.a1}));
}

TEST_CASE("merger: a trust domain stays while either stream's newest message names it") {
  World w;
  X509ContextMerger merger;
  const BundleMap c_federated = bundles({{"c.test", {&w.c}}});
  REQUIRE(merger.take_svids(w.svids(w.a1, c_federated)));
  auto ctx = merger.take_bundles(bundles({{"a.test", {&w.a1}},
                                  {"b.test", {&w.b}},
                                  {"c.test", {&w.c}}}));
  REQUIRE(ctx);
  CHECK(trust_domains_of(*ctx) == "a.test,b.test,c.test");

  // FetchX509Bundles drops b and c: b is gone, c stays because FetchX509SVID still names it.
  ctx = merger.take_bundles(bundles({{"a.test", {&w.a1}}}));
  REQUIRE(ctx);
  CHECK(trust_domains_of(*ctx) == "a.test,c.test");

  // FetchX509SVID drops c as well: now it is gone.
  ctx = merger.take_svids(w.svids(w.a1));
  REQUIRE(ctx);
  CHECK(trust_domains_of(*ctx) == "a.test");
}

TEST_CASE("merger: clear() forgets both streams, and the same identity is published again") {
  World w;
  X509ContextMerger merger;
  REQUIRE(merger.take_svids(w.svids(w.a1)));
  REQUIRE(merger.take_bundles(bundles({{"a.test", {&w.a1}},
                               {"b.test", {&w.b}}})));
  merger.clear();
  CHECK_FALSE(merger.has_svids());
  const auto ctx = merger.take_svids(w.svids(w.a1));
  REQUIRE(ctx);
  CHECK(trust_domains_of(*ctx) == "a.test");
}
