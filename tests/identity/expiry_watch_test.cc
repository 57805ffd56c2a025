#include "spiffe_tunnel/identity/expiry_watch.h"

#include <chrono>
#include <memory>

#include <catch2/catch.hpp>

#include "spiffe/test_pki.h"

using namespace spiffe_tunnel;
using namespace spiffe_tunnel::spiffe::testing;
using std::chrono::hours;
using std::chrono::minutes;
using std::chrono::seconds;

namespace {

// A snapshot with one SVID valid from `issued` (relative to now) for `lifetime`.
std::shared_ptr<const identity::Snapshot> snapshot_with(const spiffe::Issuer& root,
                                                        seconds issued, seconds lifetime) {
  spiffe::CertSpec spec;
  spec.not_before_offset = issued;
  spec.lifetime = lifetime;
  auto s = std::make_shared<identity::Snapshot>();
  s->svids.push_back(
      std::make_shared<const spiffe::X509Svid>(make_svid(root, "spiffe://a.test/web", spec)));
  s->bundles = bundle_set_of({&root});
  s->source = "test";
  return s;
}

}  // namespace

TEST_CASE("expiry watch leaves a fresh snapshot alone") {
  const auto root = make_root("a.test");
  identity::IdentityStore store;
  base::ManualClock clock(std::chrono::system_clock::now());
  identity::ExpiryWatch watch(store, clock);
  CHECK_FALSE(watch.check());  // nothing published yet
  auto snap = snapshot_with(root, seconds(-60), hours(1));
  watch.publish(snap);
  CHECK_FALSE(watch.check());
  clock.advance(minutes(30));  // half its life, when SPIRE would renew
  CHECK_FALSE(watch.check());
  CHECK(store.current() == snap);
}

TEST_CASE("expiry watch withdraws the snapshot once its SVID has expired") {
  const auto root = make_root("a.test");
  identity::IdentityStore store;
  base::ManualClock clock(std::chrono::system_clock::now());
  identity::ExpiryWatch watch(store, clock);
  auto snap = snapshot_with(root, seconds(-60), hours(1));
  watch.publish(snap);
  clock.advance(minutes(50));  // < 20% left: warns, keeps serving
  CHECK_FALSE(watch.check());
  CHECK_FALSE(watch.check());  // warns only once
  CHECK(store.current() == snap);
  clock.set(snap->earliest_expiry() - seconds(1));
  CHECK_FALSE(watch.check());
  CHECK(store.current() == snap);
  clock.set(snap->earliest_expiry());
  CHECK(watch.check());
  CHECK(store.current() == nullptr);
  CHECK_FALSE(watch.check());  // nothing left to withdraw

  // A renewed identity is served again.
  auto renewed = snapshot_with(root, seconds(-60), hours(1));
  clock.set(std::chrono::system_clock::now());
  watch.publish(renewed);
  CHECK_FALSE(watch.check());
  CHECK(store.current() == renewed);
}

TEST_CASE("expiry watch withdraws when the earliest of several SVIDs expires") {
  const auto root = make_root("a.test");
  identity::IdentityStore store;
  base::ManualClock clock(std::chrono::system_clock::now());
  identity::ExpiryWatch watch(store, clock);
  auto s = std::make_shared<identity::Snapshot>();
  s->source = "test";
  for (auto lifetime : {hours(2), hours(1)}) {
    spiffe::CertSpec spec;
    spec.lifetime = lifetime;
    s->svids.push_back(
        std::make_shared<const spiffe::X509Svid>(make_svid(root, "spiffe://a.test/web", spec)));
  }
  watch.publish(s);
  clock.advance(hours(1));
  CHECK(watch.check());
  CHECK(store.current() == nullptr);
}

TEST_CASE("expiry watch passes revocations through") {
  const auto root = make_root("a.test");
  identity::IdentityStore store;
  base::ManualClock clock(std::chrono::system_clock::now());
  identity::ExpiryWatch watch(store, clock);
  watch.publish(snapshot_with(root, seconds(-60), hours(1)));
  watch.withdraw();
  CHECK(store.current() == nullptr);
  CHECK(store.generation() == 2);
}
