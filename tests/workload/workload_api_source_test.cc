#include "spiffe_tunnel/workload/workload_api_source.h"

#include <grpcpp/grpcpp.h>
#include <stdlib.h>

#include <atomic>
#include <chrono>
#include <string>
#include <thread>
#include <vector>

#include <catch2/catch.hpp>

#include "spiffe/test_pki.h"
#include "workload/backoff.h"
#include "workload/fake_workload_api.h"
#include "workload/source_test_support.h"

using namespace spiffe_tunnel;
using namespace spiffe_tunnel::spiffe::testing;
using namespace spiffe_tunnel::workload::testing;
using workload::WorkloadApiSource;
using Catch::Matchers::Contains;
using std::chrono::milliseconds;


// --- Addresses -----------------------------------------------------------------------------------

TEST_CASE("maps Workload API addresses to gRPC targets") {
  const std::vector<std::pair<std::string, std::string>> table = {
      {"unix:///run/spire/agent.sock", "unix:/run/spire/agent.sock"},
      {"UNIX:///tmp/a.sock", "unix:/tmp/a.sock"},
      {"unix:///tmp/my%20dir/a.sock", "unix:/tmp/my%20dir/a.sock"},
      {"tcp://127.0.0.1:8000", "ipv4:127.0.0.1:8000"},
      {"tcp://[::1]:8000", "ipv6:[::1]:8000"},
      {"tcp://[2001:db8::5]:65535", "ipv6:[2001:db8::5]:65535"},
  };
  for (const auto& [address, target] : table) {
    INFO(address);
    auto got = WorkloadApiSource::grpc_target(address);
    REQUIRE(got.ok());
    CHECK(*got == target);
  }
}

TEST_CASE("rejects addresses SPIFFE forbids, saying why") {
  const std::vector<std::pair<std::string, std::string>> table = {
      {"", "empty"},
      {"/run/spire/agent.sock", "no scheme"},
      {"http://127.0.0.1:80", "scheme \"http\""},
      {"unix:agent.sock", "three slashes"},
      {"unix:/run/agent.sock", "three slashes"},
      {"unix://host/run/agent.sock", "host part"},
      {"unix://run/agent.sock", "host part"},
      {"unix://", "host part"},
      {"unix:///", "does not name a socket"},
      {"unix:///run/spire/", "does not name a socket"},
      {"unix:////run/agent.sock", "'//'"},
      {"unix:///run/agent.sock?x=1", "query"},
      {"unix:///run/agent.sock#frag", "fragment"},
      {"unix:///run/a%zz.sock", "%XX"},
      {"unix:///run/a b.sock", "spaces"},
      {"tcp://localhost:8000", "not a host name"},
      {"tcp://spire.example.org:8000", "not a host name"},
      {"tcp://127.0.0.1", "no port"},
      {"tcp://127.0.0.1:", "invalid port"},
      {"tcp://127.0.0.1:0", "invalid port"},
      {"tcp://127.0.0.1:70000", "invalid port"},
      {"tcp://127.0.0.1:80x", "invalid port"},
      {"tcp://127.0.0.1:8000/foo", "has a path"},
      {"tcp://127.0.0.1:8000/", "has a path"},
      {"tcp://user@127.0.0.1:8000", "user information"},
      {"tcp://[::1:8000", "closing ']'"},
      {"tcp://[::1]", "no port"},
      {"tcp://[zz::1]:80", "invalid IPv6"},
      {"tcp:127.0.0.1:8000", "tcp://IP:port"},
  };
  for (const auto& [address, why] : table) {
    INFO(address);
    auto got = WorkloadApiSource::grpc_target(address);
    REQUIRE_FALSE(got.ok());
    CHECK_THAT(got.error().message, Contains(why));
  }
}

TEST_CASE("create() falls back to SPIFFE_ENDPOINT_SOCKET and names it in errors") {
  const char* saved = getenv("SPIFFE_ENDPOINT_SOCKET");
  const std::string saved_value = saved ? saved : "";

  unsetenv("SPIFFE_ENDPOINT_SOCKET");
  auto none = WorkloadApiSource::create({});
  REQUIRE_FALSE(none.ok());
  CHECK_THAT(none.error().message, Contains("SPIFFE_ENDPOINT_SOCKET"));

  setenv("SPIFFE_ENDPOINT_SOCKET", "unix:///run/spire/agent.sock", 1);
  auto from_env = WorkloadApiSource::create({});
  REQUIRE(from_env.ok());
  CHECK((*from_env)->describe() == "workload-api unix:///run/spire/agent.sock");

  auto explicit_wins = WorkloadApiSource::create({.address = "tcp://127.0.0.1:9"});
  REQUIRE(explicit_wins.ok());
  CHECK((*explicit_wins)->describe() == "workload-api tcp://127.0.0.1:9");

  setenv("SPIFFE_ENDPOINT_SOCKET", "unix:relative.sock", 1);
  auto bad_env = WorkloadApiSource::create({});
  REQUIRE_FALSE(bad_env.ok());
  CHECK_THAT(bad_env.error().message, Contains("SPIFFE_ENDPOINT_SOCKET: Workload API address"));

  auto bad_option = WorkloadApiSource::create({.address = "tcp://localhost:1"});
  REQUIRE_FALSE(bad_option.ok());
  CHECK_THAT(bad_option.error().message, Contains("Workload API address \"tcp://localhost:1\""));
  CHECK_THAT(bad_option.error().message, !Contains("SPIFFE_ENDPOINT_SOCKET"));

  if (saved) {
    setenv("SPIFFE_ENDPOINT_SOCKET", saved_value.c_str(), 1);
  } else {
    unsetenv("SPIFFE_ENDPOINT_SOCKET");
  }
}

// --- Backoff -------------------------------------------------------------------------------------

TEST_CASE("backoff doubles with ±20% jitter up to the cap and starts over after reset") {
  workload::Backoff backoff(milliseconds(1000), milliseconds(30000), /*seed=*/42);
  const std::vector<int> bases = {1000, 2000, 4000, 8000, 16000, 30000, 30000};
  for (int base : bases) {
    const auto d = backoff.next().count();
    INFO(base << " → " << d);
    CHECK(d >= base * 8 / 10);
    CHECK(d <= base * 12 / 10);
  }
  backoff.reset();
  const auto d = backoff.next().count();
  CHECK(d >= 800);
  CHECK(d <= 1200);
  CHECK(backoff.at_cap().count() >= 24000);
}

TEST_CASE("backoff never waits past the held identities' expiry, and about 1 s after it") {
  workload::Backoff backoff(milliseconds(1000), milliseconds(30000), /*seed=*/7);
  for (int i = 0; i < 5; ++i) {
    backoff.next();  // base now at the 30 s cap
  }
  // 12 s of validity left: the next attempt comes at 12 s, not 24-36 s
  CHECK(backoff.next_within(milliseconds(12000)).count() == 12000);
  // expired (or about to): about the initial delay, jittered, however far the base has grown
  for (int i = 0; i < 20; ++i) {
    const auto d = backoff.next_within(milliseconds(0)).count();
    CHECK(d >= 800);
    CHECK(d <= 1200);
  }
  // plenty of time left: the ordinary schedule
  backoff.reset();
  const auto d = backoff.next_within(milliseconds(3600000)).count();
  CHECK(d >= 800);
  CHECK(d <= 1200);
}

// --- Against a fake agent ------------------------------------------------------------------------

TEST_CASE_METHOD(SourceFixture<>,
                 "delivers every SVID, its bundle and the federated bundles of a response") {
  REQUIRE(fake.serving());
  const spiffe::Issuer root_a = make_root("a.test");
  const spiffe::Issuer mid_a = make_intermediate(root_a);
  const spiffe::Issuer root_b = make_root("b.test");
  const spiffe::Issuer root_c = make_root("c.test");
  const auto internal = make_svid(mid_a, "spiffe://a.test/internal");
  const auto external = make_svid(root_a, "spiffe://a.test/external");
  const auto shadowed = make_svid(root_a, "spiffe://a.test/shadowed");

  X509SVIDResponse r;
  *r.add_svids() = entry_of(internal, root_a, "internal");
  *r.add_svids() = entry_of(external, root_a, "external");
  *r.add_svids() = entry_of(shadowed, root_a, "internal");  // repeated hint: the first wins
  (*r.mutable_federated_bundles())["spiffe://b.test"] = der_of(root_b.certificate());
  (*r.mutable_federated_bundles())["c.test"] = der_of(root_c.certificate());
  (*r.mutable_federated_bundles())["spiffe://d.test"] = "";  // legal: trusts nothing
  fake.send(r);

  start_source();
  REQUIRE(rec.wait_updates(1));
  const auto ctx = rec.update(0);
  REQUIRE(ctx.svids.size() == 2);
  CHECK(leaf_id(ctx, 0) == "spiffe://a.test/internal");
  CHECK(ctx.svids[0]->hint == "internal");
  REQUIRE(ctx.svids[0]->chain.size() == 2);
  CHECK(X509_cmp(ctx.svids[0]->chain[1].get(), mid_a.certificate()) == 0);
  CHECK(EVP_PKEY_eq(ctx.svids[0]->key.get(), internal.key.get()) == 1);
  CHECK(leaf_id(ctx, 1) == "spiffe://a.test/external");
  CHECK(ctx.svids[1]->hint == "external");

  CHECK(ctx.bundles.size() == 4);
  const auto* a = ctx.bundles.find(td_of("a.test"));
  const auto* b = ctx.bundles.find(td_of("b.test"));
  const auto* c = ctx.bundles.find(td_of("c.test"));
  const auto* d = ctx.bundles.find(td_of("d.test"));
  REQUIRE(a);
  REQUIRE(b);
  REQUIRE(c);
  REQUIRE(d);
  REQUIRE(a->authorities().size() == 1);
  CHECK(X509_cmp(a->authorities()[0].get(), root_a.certificate()) == 0);
  CHECK(X509_cmp(b->authorities()[0].get(), root_b.certificate()) == 0);
  CHECK(X509_cmp(c->authorities()[0].get(), root_c.certificate()) == 0);
  CHECK(d->authorities().empty());
  source->stop();
  CHECK(fake.header_rejections() == 0);
  CHECK(rec.revocations() == 0);
}

TEST_CASE_METHOD(SourceFixture<>, "discards broken responses and keeps the last good identity") {
  X509SVIDResponse broken = agent.response_for(agent.db);
  SECTION("malformed certificate DER") {
    broken.mutable_svids(0)->set_x509_svid("\x30\x82\x01\x00not a certificate");
  }
  SECTION("key that does not match the certificate") {
    broken.mutable_svids(0)->set_x509_svid_key(pkcs8_der_of(agent.web.key.get()));
  }
  SECTION("malformed key DER") {
    broken.mutable_svids(0)->set_x509_svid_key("\x30\x01");
  }
  SECTION("no SVID at all") {
    broken.clear_svids();
  }
  fake.send(agent.response_for(agent.web));
  fake.send(broken);
  fake.send(agent.response_for(agent.web));  // same as the first: proves nothing was swapped in

  start_source();
  REQUIRE(rec.wait_updates(1));
  REQUIRE(eventually([&] { return fake.script_done(); }));
  // The broken response reached the client before the repeat; the repeat of the last good
  // response is recognised as unchanged, so nothing but the first update was published.
  fake.send(agent.response_for(agent.db));
  REQUIRE(rec.wait_updates(2));
  source->stop();
  CHECK(rec.updates() == 2);
  CHECK(leaf_id(rec.update(0)) == "spiffe://a.test/web");
  CHECK(leaf_id(rec.update(1)) == "spiffe://a.test/db");
  CHECK(rec.revocations() == 0);
  CHECK(fake.calls() == 1);  // a bad message does not end the stream
}

TEST_CASE_METHOD(SourceFixture<>,
                 "tolerates duplicate identical responses without publishing again") {
  for (int i = 0; i < 5; ++i) {
    fake.send(agent.response_for(agent.web));
  }
  fake.send(agent.response_for(agent.db));
  start_source();
  REQUIRE(rec.wait_updates(2));
  source->stop();
  CHECK(rec.updates() == 2);
  CHECK(leaf_id(rec.update(0)) == "spiffe://a.test/web");
  CHECK(leaf_id(rec.update(1)) == "spiffe://a.test/db");
}

TEST_CASE_METHOD(SourceFixture<>,
                 "reconnects after the stream fails with Unavailable and delivers again") {
  fake.send(agent.response_for(agent.web));
  fake.end_stream({grpc::StatusCode::UNAVAILABLE, "agent is shutting down"});
  fake.send(agent.response_for(agent.db));
  start_source();
  REQUIRE(rec.wait_updates(2));
  source->stop();
  CHECK(fake.calls() == 2);
  CHECK(leaf_id(rec.update(1)) == "spiffe://a.test/db");
  CHECK(rec.revocations() == 0);
  CHECK(fake.header_rejections() == 0);  // the header went out once on each call
}

TEST_CASE_METHOD(SourceFixture<>,
                 "after a reconnect, the same identity again is not published twice") {
  fake.send(agent.response_for(agent.web));
  fake.end_stream({grpc::StatusCode::UNAVAILABLE, "agent restarting"});
  fake.send(agent.response_for(agent.web));
  fake.send(agent.response_for(agent.db));
  start_source();
  REQUIRE(rec.wait_updates(2));
  source->stop();
  CHECK(fake.calls() == 2);
  CHECK(rec.updates() == 2);
  CHECK(leaf_id(rec.update(0)) == "spiffe://a.test/web");
  CHECK(leaf_id(rec.update(1)) == "spiffe://a.test/db");
}

TEST_CASE("keeps retrying while the agent is down and resumes when it is back") {
  TempDir dir;
  Agent agent;
  Recorder rec;
  // No agent yet: the socket does not exist. The agent being absent for a while (several
  // 20-100 ms backoff rounds, none of which can be observed from outside) is what is tested.
  auto source = make_source("unix://" + agent_socket(dir));
  source->start(rec.callbacks());
  std::this_thread::sleep_for(milliseconds(150));
  {
    FakeWorkloadApi fake(agent_socket(dir));
    fake.send(agent.response_for(agent.web));
    REQUIRE(rec.wait_updates(1));
  }  // the agent goes away mid-stream
  // Again a window in which the agent is gone: no revocation may come out of it.
  std::this_thread::sleep_for(milliseconds(150));
  CHECK(rec.revocations() == 0);  // losing the agent is not a revocation
  FakeWorkloadApi restarted(agent_socket(dir));
  restarted.send(agent.response_for(agent.db));
  REQUIRE(rec.wait_updates(2));
  source->stop();
  CHECK(leaf_id(rec.update(1)) == "spiffe://a.test/db");
}

TEST_CASE("every reconnect attempt connects at once: gRPC's connection backoff does not delay it") {
  TempDir dir;
  std::atomic<int> attempts{0};
  // No agent: every attempt is refused at once. Our backoff is 20-100 ms; the channels of
  // successive attempts share one subchannel, and gRPC's default connection backoff on it (1 s,
  // 1.6 s, 2.56 s, ...) would allow only one or two attempts in 2 s.
  auto source = WorkloadApiSource::create(
      {.address = "unix://" + agent_socket(dir),
       .initial_backoff = milliseconds(20),
       .max_backoff = milliseconds(100),
       .observer = {.on_connection = {}, .on_reconnect = [&] { ++attempts; }}});
  REQUIRE(source.ok());
  Recorder rec;
  (*source)->start(rec.callbacks());
  std::this_thread::sleep_for(milliseconds(2000));
  (*source)->stop();
  INFO("attempts in 2 s: " << attempts.load());
  CHECK(attempts.load() >= 10);
}

TEST_CASE_METHOD(SourceFixture<>, "PermissionDenied after identities were delivered revokes them") {
  fake.send(agent.response_for(agent.web));
  fake.end_stream({grpc::StatusCode::PERMISSION_DENIED, "no identity issued"});
  start_source();
  REQUIRE(rec.wait_updates(1));
  REQUIRE(eventually([&] { return rec.revocations() == 1; }));
  CHECK_THAT(rec.revocation(0), Contains("PermissionDenied"));
  CHECK_THAT(rec.revocation(0), Contains("no identity issued"));
  // Re-registered: the same identity comes back and is published again.
  fake.send(agent.response_for(agent.web));
  REQUIRE(rec.wait_updates(2));
  source->stop();
  CHECK(rec.revocations() == 1);
  CHECK(leaf_id(rec.update(1)) == "spiffe://a.test/web");
}

TEST_CASE_METHOD(SourceFixture<>, "PermissionDenied before any identity means not registered yet") {
  fake.reject_calls_with(grpc::Status(grpc::StatusCode::PERMISSION_DENIED, "no identity issued"));
  start_source();
  REQUIRE(eventually([&] { return fake.calls() >= 3; }));
  CHECK(rec.revocations() == 0);
  fake.reject_calls_with(std::nullopt);
  fake.send(agent.response_for(agent.web));
  REQUIRE(rec.wait_updates(1));
  source->stop();
  CHECK(rec.revocations() == 0);
}

TEST_CASE_METHOD(SourceFixture<>, "InvalidArgument is reported but never stops the source") {
  fake.reject_calls_with(grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "bad request"));
  start_source();
  REQUIRE(eventually([&] { return fake.calls() >= 3; }));
  fake.reject_calls_with(std::nullopt);
  fake.send(agent.response_for(agent.web));
  REQUIRE(rec.wait_updates(1));
  source->stop();
}

TEST_CASE_METHOD(SourceFixture<>,
                 "the fake agent, like SPIRE, rejects calls without exactly one security header") {
  auto call = [&](int headers, const std::string& value) {
    return call_with_headers<X509SVIDResponse>(agent_socket(dir), headers, value,
                                               &SpiffeWorkloadAPI::Stub::FetchX509SVID,
                                               X509SVIDRequest());
  };
  CHECK(call(0, "true") == std::make_pair(false, grpc::StatusCode::INVALID_ARGUMENT));
  CHECK(call(2, "true") == std::make_pair(false, grpc::StatusCode::INVALID_ARGUMENT));
  CHECK(call(1, "yes") == std::make_pair(false, grpc::StatusCode::INVALID_ARGUMENT));
  CHECK(fake.header_rejections() == 3);
  fake.send(agent.response_for(agent.web));
  fake.end_stream(grpc::Status::OK);
  CHECK(call(1, "true") == std::make_pair(true, grpc::StatusCode::OK));

  // So a source that gets an identity from it sent the header exactly once.
  fake.send(agent.response_for(agent.web));
  start_source();
  REQUIRE(rec.wait_updates(1));
  source->stop();
  CHECK(fake.header_rejections() == 3);
}

TEST_CASE("stop() returns promptly while streaming, while retrying, and twice") {
  TempDir dir;
  Agent agent;
  Recorder rec;
  SECTION("streaming") {
    FakeWorkloadApi fake(agent_socket(dir));
    fake.send(agent.response_for(agent.web));
    auto source = make_source(fake.address());
    source->start(rec.callbacks());
    REQUIRE(rec.wait_updates(1));
    REQUIRE(fake.open_streams() == 1);
    const auto t0 = std::chrono::steady_clock::now();
    source->stop();
    CHECK(std::chrono::steady_clock::now() - t0 < milliseconds(500));
    source->stop();
    CHECK(eventually([&] { return fake.open_streams() == 0; }));
  }
  SECTION("waiting for the first message") {
    FakeWorkloadApi fake(agent_socket(dir));
    auto source = make_source(fake.address());
    source->start(rec.callbacks());
    REQUIRE(eventually([&] { return fake.open_streams() == 1; }));
    const auto t0 = std::chrono::steady_clock::now();
    source->stop();
    CHECK(std::chrono::steady_clock::now() - t0 < milliseconds(500));
  }
  SECTION("backing off with a long delay") {
    auto source = WorkloadApiSource::create({.address = "unix://" + agent_socket(dir),
                                             .initial_backoff = std::chrono::seconds(60),
                                             .max_backoff = std::chrono::seconds(60)});
    REQUIRE(source.ok());
    // An agent that turns both calls down: the source answers each with a 60 s backoff.
    FakeWorkloadApi fake(agent_socket(dir));
    const grpc::Status unavailable(grpc::StatusCode::UNAVAILABLE, "agent restarting");
    fake.reject_calls_with(unavailable);
    fake.reject_bundles_calls_with(unavailable);
    (*source)->start(rec.callbacks());
    REQUIRE(eventually([&] { return fake.calls() >= 1 && fake.bundles_calls() >= 1; }));
    const auto t0 = std::chrono::steady_clock::now();
    (*source)->stop();
    CHECK(std::chrono::steady_clock::now() - t0 < milliseconds(500));
  }
  SECTION("never started") {
    auto source = make_source("unix://" + agent_socket(dir));
    source->stop();
    source->stop();
  }
  CHECK(rec.revocations() == 0);
}
