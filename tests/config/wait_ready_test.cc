#include "spiffe_tunnel/config/wait_ready.h"

#include <stdlib.h>

#include <chrono>
#include <string>
#include <vector>

#include <catch2/catch.hpp>

#include "config/config_test_support.h"

using namespace std::chrono_literals;
using namespace spiffe_tunnel::config;
using namespace spiffe_tunnel::config::testing;
using Catch::Matchers::Contains;
using Catch::Matchers::StartsWith;

TEST_CASE("wait-ready without identity flags waits on the Workload API of the environment") {
  auto c = read_wait_ready_flags({});
  REQUIRE(c.ok());
  CHECK(c->identity.kind == IdentityConfig::Kind::kWorkloadApi);
  CHECK(c->identity.workload_api.empty());  // SPIFFE_ENDPOINT_SOCKET, resolved by the source
  CHECK(c->timeout == 60s);
  CHECK(c->trust_domains.empty());
  CHECK_FALSE(c->svid_id);
  CHECK_FALSE(c->svid_hint);
}

TEST_CASE("wait-ready reads the SVID, trust domains and timeout it is given") {
  auto c = read_wait_ready_flags({.workload_api = "unix:///run/spire/agent.sock",
                                  .svid = "spiffe://td-a.test/app",
                                  .trust_domains = {"td-a.test", "spiffe://td-b.test"},
                                  .timeout = "90s"});
  REQUIRE(c.ok());
  CHECK(c->identity.workload_api == "unix:///run/spire/agent.sock");
  CHECK(c->svid_id->str() == "spiffe://td-a.test/app");
  REQUIRE(c->trust_domains.size() == 2);
  CHECK(c->trust_domains[1].name() == "td-b.test");
  CHECK(c->timeout == 90s);
}

TEST_CASE("wait-ready takes the identity section of a configuration file") {
  IdentityFiles dir;
  const std::string file = dir.write(
      "c.yaml", std::string(kWorkloadApiIdentity) +
                    "tunnels:\n  - {name: a, mode: server, listen: \":1\", target: \":2\", "
                    "allow: {any: true}}\n");
  auto c = read_wait_ready_flags({.config_file = file, .svid_hint = "internal"});
  REQUIRE(c.ok());
  CHECK(c->identity.workload_api == "unix:///run/spire/agent.sock");
  CHECK(c->svid_hint == "internal");
  CHECK(c->origin == file);
}

TEST_CASE("wait-ready refuses bad flags, naming the flag") {
  IdentityFiles dir;
  struct Case {
    WaitReadyFlags flags;
    std::string message;
  };
  const std::vector<Case> cases = {
      {{.svid = "spiffe://a/x", .svid_hint = "h"}, "choose either --svid or --svid-hint"},
      {{.svid = "a/x"}, "flag --svid: "},
      {{.trust_domains = {"td-a.test", "Bad_TD"}}, "flag --trust-domain: "},
      {{.timeout = "soon"}, "flag --timeout: "},
      {{.timeout = "0"}, "flag --timeout: must be more than 0"},
      {{.config_file = dir.path("c.yaml"), .workload_api = "unix:///x"},
       "choose either -c FILE or --workload-api"},
      {{.config_file = dir.path("missing.yaml")}, "cannot read config file "},
      {{.workload_api = "unix:///x", .cert = dir.path("svid.pem")}, "choose either --cert"},
      {{.cert = dir.path("svid.pem")}, "--cert and --key are both required"},
      {{.cert = dir.path("svid.pem"), .key = dir.path("key.pem"), .bundles = {"nofile"}},
       "flag --bundle \"nofile\": expected TRUST_DOMAIN=FILE"},
  };
  for (const auto& c : cases) {
    INFO(c.message);
    auto r = read_wait_ready_flags(c.flags);
    REQUIRE_FALSE(r.ok());
    CHECK_THAT(r.error().message, StartsWith(c.message));
  }
}

TEST_CASE("wait-ready with -c reports the file's own errors with file:line:column") {
  IdentityFiles dir;
  const std::string file = dir.write("bad.yaml", "identity:\n  workload_api: x\n  bogus: 1\n");
  auto r = read_wait_ready_flags({.config_file = file});
  REQUIRE_FALSE(r.ok());
  CHECK_THAT(r.error().message, StartsWith(file + ":"));
}

TEST_CASE("wait-ready takes --key-permissions with files, as the tunnels do") {
  auto c = read_wait_ready_flags({.cert = "svid.pem",
                                  .key = "key.pem",
                                  .bundles = {"td.test=bundle.pem"},
                                  .key_permissions = "warn"});
  REQUIRE(c.ok());
  CHECK(c->identity.key_permissions == KeyPermissions::kWarn);
  auto bad = read_wait_ready_flags(
      {.cert = "svid.pem", .key = "key.pem", .key_permissions = "maybe"});
  REQUIRE_FALSE(bad.ok());
  CHECK_THAT(bad.error().message, Contains("--key-permissions"));
}
