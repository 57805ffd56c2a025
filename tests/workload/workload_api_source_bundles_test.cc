// WorkloadApiSource with its second stream, FetchX509Bundles, against the fake agent: what the
// published context holds when both streams speak, and how each stream's failures are handled.

#include <grpcpp/grpcpp.h>

#include <chrono>
#include <string>
#include <thread>

#include <catch2/catch.hpp>

#include "spiffe/test_pki.h"
#include "spiffe_tunnel/workload/workload_api_source.h"
#include "workload/fake_workload_api.h"
#include "workload/source_test_support.h"

using namespace spiffe_tunnel;
using namespace spiffe_tunnel::spiffe::testing;
using namespace spiffe_tunnel::workload::testing;
using Catch::Matchers::Contains;
using std::chrono::milliseconds;

namespace {

// Agent's trust domain a.test plus two federated ones.
struct Federation : Agent {
  spiffe::Issuer root_b = make_root("b.test");
  spiffe::Issuer root_c = make_root("c.test");
  spiffe::Issuer root_d = make_root("d.test");
};

struct FederationFixture : SourceFixture<Federation> {
  const Federation& f = agent;
};

bool has_td(const workload::X509Context& ctx, std::string_view td) {
  return ctx.bundles.find(td_of(td)) != nullptr;
}

}  // namespace

TEST_CASE_METHOD(FederationFixture,
                 "a federated bundle delivered only by FetchX509Bundles is published") {
  SECTION("after the first identity") {
    fake.send(f.response_for(f.web));
    start_source();
    REQUIRE(rec.wait_updates(1));
    CHECK(trust_domains_of(rec.update(0)) == "a.test");
    fake.send_bundles(bundles_response({{"spiffe://a.test", {&f.root}}, {"b.test", {&f.root_b}}}));
    REQUIRE(rec.wait_updates(2));
    CHECK(trust_domains_of(rec.update(1)) == "a.test,b.test");
    CHECK(bundle_is(rec.update(1), "b.test", {&f.root_b}));
    CHECK(leaf_id(rec.update(1)) == "spiffe://a.test/web");
  }
  SECTION("held until the first identity arrives") {
    fake.send_bundles(
        bundles_response({{"spiffe://a.test", {&f.root}}, {"spiffe://b.test", {&f.root_b}}}));
    start_source();
    REQUIRE(eventually([&] { return fake.bundles_script_done(); }));
    // What is tested is that nothing happens: no event marks "the source read the bundles and
    // published nothing", so give it a window to do the wrong thing (it takes ~1 ms).
    std::this_thread::sleep_for(milliseconds(100));
    CHECK(rec.updates() == 0);  // bundles alone are no identity
    fake.send(f.response_for(f.web));
    REQUIRE(rec.wait_updates(1));
    CHECK(trust_domains_of(rec.update(0)) == "a.test,b.test");
  }
  SECTION("a rotated root of the agent's own trust domain") {
    const spiffe::Issuer next = make_root("a.test");
    fake.send(f.response_for(f.web));
    start_source();
    REQUIRE(rec.wait_updates(1));
    fake.send_bundles(bundles_response({{"spiffe://a.test", {&f.root, &next}}}));
    REQUIRE(rec.wait_updates(2));
    CHECK(bundle_is(rec.update(1), "a.test", {&f.root, &next}));
  }
  source->stop();
  CHECK(rec.revocations() == 0);
  CHECK(fake.header_rejections() == 0);
}

TEST_CASE_METHOD(FederationFixture,
                 "FetchX509Bundles saying what FetchX509SVID said publishes nothing more") {
  // As SPIRE sends them: the same bundles on both streams.
  X509SVIDResponse svids = f.response_for(f.web);
  (*svids.mutable_federated_bundles())["spiffe://b.test"] = der_of(f.root_b.certificate());
  fake.send(svids);
  start_source();
  REQUIRE(rec.wait_updates(1));
  fake.send_bundles(
      bundles_response({{"spiffe://a.test", {&f.root}}, {"spiffe://b.test", {&f.root_b}}}));
  // A change behind the repeat proves the repeat was read and published nothing.
  fake.send_bundles(bundles_response({{"spiffe://a.test", {&f.root}},
                                      {"spiffe://b.test", {&f.root_b}},
                                      {"spiffe://d.test", {&f.root_d}}}));
  REQUIRE(rec.wait_last([](const auto& ctx) { return has_td(ctx, "d.test"); }));
  source->stop();
  CHECK(rec.updates() == 2);
  CHECK(trust_domains_of(rec.update(0)) == "a.test,b.test");
}

TEST_CASE_METHOD(
    FederationFixture,
    "a trust domain dropped by FetchX509Bundles disappears unless FetchX509SVID names it") {
  X509SVIDResponse svids = f.response_for(f.web);
  (*svids.mutable_federated_bundles())["spiffe://c.test"] = der_of(f.root_c.certificate());
  fake.send(svids);
  start_source();
  REQUIRE(rec.wait_updates(1));
  fake.send_bundles(bundles_response(
      {{"spiffe://a.test", {&f.root}}, {"b.test", {&f.root_b}}, {"c.test", {&f.root_c}}}));
  REQUIRE(rec.wait_last(
      [](const auto& ctx) { return trust_domains_of(ctx) == "a.test,b.test,c.test"; }));
  fake.send_bundles(bundles_response({{"spiffe://a.test", {&f.root}}}));
  REQUIRE(rec.wait_last([](const auto& ctx) { return trust_domains_of(ctx) == "a.test,c.test"; }));
  source->stop();
  CHECK(rec.updates() == 3);
  CHECK(fake.bundles_calls() == 1);
}

TEST_CASE_METHOD(
    FederationFixture,
    "a broken FetchX509Bundles message is discarded whole, keeping the last good bundles") {
  X509BundlesResponse broken =
      bundles_response({{"spiffe://a.test", {&f.root}}, {"spiffe://c.test", {&f.root_c}}});
  SECTION("malformed certificate DER") {
    (*broken.mutable_bundles())["spiffe://b.test"] = "\x30\x82\x01\x00not a certificate";
  }
  SECTION("key that is not a trust domain") {
    (*broken.mutable_bundles())["spiffe://Not A TD"] = der_of(f.root_b.certificate());
  }
  SECTION("no bundle at all") {
    broken.clear_bundles();
  }
  fake.send(f.response_for(f.web));
  start_source();
  REQUIRE(rec.wait_updates(1));
  fake.send_bundles(bundles_response({{"spiffe://a.test", {&f.root}}, {"b.test", {&f.root_b}}}));
  fake.send_bundles(broken);
  // Nothing of the broken message is taken: not its c.test, and b.test is not dropped.
  fake.send_bundles(bundles_response(
      {{"spiffe://a.test", {&f.root}}, {"b.test", {&f.root_b}}, {"d.test", {&f.root_d}}}));
  REQUIRE(rec.wait_last([](const auto& ctx) { return has_td(ctx, "d.test"); }));
  source->stop();
  REQUIRE(rec.updates() == 3);
  CHECK(trust_domains_of(rec.update(1)) == "a.test,b.test");
  CHECK(trust_domains_of(rec.update(2)) == "a.test,b.test,d.test");
  CHECK(fake.bundles_calls() == 1);  // a bad message does not end the stream
}

TEST_CASE_METHOD(
    FederationFixture,
    "an agent without FetchX509Bundles: the source keeps working on FetchX509SVID alone") {
  fake.reject_bundles_calls_with(grpc::Status(grpc::StatusCode::UNIMPLEMENTED, ""));
  X509SVIDResponse svids = f.response_for(f.web);
  (*svids.mutable_federated_bundles())["spiffe://b.test"] = der_of(f.root_b.certificate());
  fake.send(svids);
  start_source();
  REQUIRE(rec.wait_updates(1));
  CHECK(trust_domains_of(rec.update(0)) == "a.test,b.test");
  // What is tested is that no retry comes: backoff is 20-100 ms here, so a retry would have come
  // within this window. An absence has no event to wait for.
  std::this_thread::sleep_for(milliseconds(300));
  CHECK(fake.bundles_calls() == 1);
  fake.send(f.response_for(f.db));
  REQUIRE(rec.wait_updates(2));
  source->stop();
  CHECK(leaf_id(rec.update(1)) == "spiffe://a.test/db");
  CHECK(trust_domains_of(rec.update(1)) == "a.test");
  CHECK(rec.revocations() == 0);
}

TEST_CASE_METHOD(
    FederationFixture,
    "PermissionDenied on FetchX509Bundles revokes nothing and keeps the last bundles") {
  fake.send(f.response_for(f.web));
  start_source();
  REQUIRE(rec.wait_updates(1));
  fake.send_bundles(bundles_response({{"spiffe://a.test", {&f.root}}, {"b.test", {&f.root_b}}}));
  REQUIRE(rec.wait_updates(2));
  fake.reject_bundles_calls_with(
      grpc::Status(grpc::StatusCode::PERMISSION_DENIED, "no identity issued"));
  fake.end_bundles_stream({grpc::StatusCode::PERMISSION_DENIED, "no identity issued"});
  REQUIRE(eventually([&] { return fake.bundles_calls() >= 3; }));  // it keeps retrying
  CHECK(rec.revocations() == 0);
  fake.send(f.response_for(f.db));
  REQUIRE(rec.wait_updates(3));
  source->stop();
  CHECK(leaf_id(rec.update(2)) == "spiffe://a.test/db");
  CHECK(trust_domains_of(rec.update(2)) == "a.test,b.test");
  CHECK(rec.revocations() == 0);
}

TEST_CASE_METHOD(
    FederationFixture,
    "a revocation forgets the bundles and restarts FetchX509Bundles for a fresh snapshot") {
  fake.send(f.response_for(f.web));
  start_source();
  REQUIRE(rec.wait_updates(1));
  fake.send_bundles(bundles_response({{"spiffe://a.test", {&f.root}}, {"b.test", {&f.root_b}}}));
  REQUIRE(rec.wait_updates(2));
  fake.end_stream({grpc::StatusCode::PERMISSION_DENIED, "no identity issued"});
  REQUIRE(eventually([&] { return rec.revocations() == 1; }));
  // The open FetchX509Bundles call is cancelled and made again, without waiting for a failure.
  REQUIRE(
      eventually([&] { return fake.bundles_calls() == 2 && fake.open_bundles_streams() == 1; }));
  fake.send(f.response_for(f.web));  // re-registered
  REQUIRE(rec.wait_updates(3));
  CHECK(trust_domains_of(rec.update(2)) == "a.test");  // b.test came from before the revocation
  fake.send_bundles(bundles_response({{"spiffe://a.test", {&f.root}}, {"b.test", {&f.root_b}}}));
  REQUIRE(rec.wait_updates(4));
  source->stop();
  CHECK(trust_domains_of(rec.update(3)) == "a.test,b.test");
  CHECK(rec.revocations() == 1);
}

TEST_CASE_METHOD(FederationFixture,
                 "the source sends the security header exactly once on both RPCs") {
  // The fake is as strict on FetchX509Bundles as SPIRE...
  auto call = [&](int headers, const std::string& value) {
    return call_with_headers<X509BundlesResponse>(agent_socket(dir), headers, value,
                                                  &SpiffeWorkloadAPI::Stub::FetchX509Bundles,
                                                  X509BundlesRequest());
  };
  CHECK(call(0, "true") == std::make_pair(false, grpc::StatusCode::INVALID_ARGUMENT));
  CHECK(call(2, "true") == std::make_pair(false, grpc::StatusCode::INVALID_ARGUMENT));
  CHECK(call(1, "yes") == std::make_pair(false, grpc::StatusCode::INVALID_ARGUMENT));
  REQUIRE(fake.header_rejections() == 3);
  CHECK(fake.bundles_calls() == 0);

  // ...so a source that gets messages on both streams sent it once on each.
  fake.send(f.response_for(f.web));
  fake.send_bundles(bundles_response({{"spiffe://a.test", {&f.root}}, {"b.test", {&f.root_b}}}));
  start_source();
  REQUIRE(rec.wait_last([](const auto& ctx) { return has_td(ctx, "b.test"); }));
  source->stop();
  CHECK(fake.header_rejections() == 3);
  CHECK(fake.calls() == 1);
  CHECK(fake.bundles_calls() == 1);
}

TEST_CASE_METHOD(FederationFixture, "stop() ends both streams promptly") {
  fake.send(f.response_for(f.web));
  start_source();
  REQUIRE(rec.wait_updates(1));
  REQUIRE(eventually([&] { return fake.open_bundles_streams() == 1; }));
  const auto t0 = std::chrono::steady_clock::now();
  source->stop();
  CHECK(std::chrono::steady_clock::now() - t0 < milliseconds(500));
  CHECK(eventually([&] { return fake.open_streams() == 0 && fake.open_bundles_streams() == 0; }));
}
