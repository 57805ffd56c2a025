#include "spiffe_tunnel/config/flags.h"

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

namespace {

// A valid `server` tunnel: files identity from `dir`, one allowed ID.
TunnelFlags server_flags(const TempDir& dir) {
  TunnelFlags f;
  f.listen = "127.0.0.1:9093";
  f.target = "127.0.0.1:9092";
  f.cert = dir.path("svid.pem");
  f.key = dir.path("key.pem");
  f.bundles = {"example.org=" + dir.path("bundle.pem")};
  f.peer_ids = {"spiffe://example.org/producer"};
  return f;
}

Config finalized(const TunnelFlags& f, Mode mode, const Overrides& o = {}) {
  auto draft = read_tunnel_flags(f, mode);
  INFO((draft.ok() ? "" : draft.error().message));
  REQUIRE(draft.ok());
  auto c = finalize(std::move(*draft), o);
  INFO((c.ok() ? "" : c.error().message));
  REQUIRE(c.ok());
  return *c;
}

std::string flag_error(const TunnelFlags& f, Mode mode = Mode::kServer) {
  auto draft = read_tunnel_flags(f, mode);
  if (draft.ok()) {
    auto c = finalize(std::move(*draft), {});
    REQUIRE_FALSE(c.ok());
    return c.error().message;
  }
  return draft.error().message;
}

}  // namespace

TEST_CASE("flags and YAML build the same model for the same tunnel") {
  IdentityFiles dir;
  TunnelFlags f = server_flags(dir);
  f.name = "kafka-in";
  f.svid = "spiffe://example.org/kafka";
  f.peer_ids.push_back("spiffe://example.org/admin");
  f.peer_trust_domains = {"partner.example"};
  f.peer_patterns = {"spiffe://example.org/ns/*/sa/consumer-*"};
  f.opa_url = "http://127.0.0.1:8181/v1/data/tunnels/authz/allow";
  f.opa_timeout = "500ms";
  f.tls_min = "1.2";
  f.cipher_suites = "TLS_AES_256_GCM_SHA384";
  f.ktls = "off";
  f.key_update_records = "1000";
  f.session_resumption = true;
  f.session_ticket_lifetime = "30m";
  f.handshake_timeout = "5s";
  f.idle_timeout = "5m";
  f.max_connections = "100";
  f.buffer_size = "131072";
  Config from_flags = finalized(f, Mode::kServer);

  Config from_yaml = load_ok(with_dir(R"(identity:
  files:
    cert: {dir}/svid.pem
    key: {dir}/key.pem
    bundles: {example.org: {dir}/bundle.pem}
tunnels:
  - name: kafka-in
    mode: server
    listen: 127.0.0.1:9093
    target: 127.0.0.1:9092
    svid: {id: spiffe://example.org/kafka}
    allow:
      ids: [spiffe://example.org/producer, spiffe://example.org/admin]
      trust_domains: [partner.example]
      patterns: ["spiffe://example.org/ns/*/sa/consumer-*"]
    opa: {url: "http://127.0.0.1:8181/v1/data/tunnels/authz/allow", timeout: 500ms}
    tls: {min_version: "1.2", cipher_suites: TLS_AES_256_GCM_SHA384, ktls: "off",
          key_update_records: 1000, session_resumption: true, session_ticket_lifetime: 30m}
    timeouts: {handshake: 5s, idle: 5m}
    max_connections: 100
    buffer_size: 131072
)",
                                     dir.str()));
  REQUIRE(from_yaml.tunnels.size() == 1);
  // Only where each was written differs.
  CHECK(from_flags.tunnels[0].origin == "command line");
  CHECK(from_yaml.tunnels[0].origin == "test.yaml:7:5");
  CHECK(from_yaml.file == "test.yaml");
  from_yaml.tunnels[0].origin = from_flags.tunnels[0].origin;
  from_yaml.file = from_flags.file;
  CHECK(from_flags == from_yaml);
  CHECK(from_flags.tunnels[0].opa->endpoint.port == 8181);
  CHECK(from_flags.tunnels[0].tls.ktls == KtlsMode::kOff);
  CHECK(from_flags.tunnels[0].tls.key_update_records == 1000);
  CHECK(from_flags.tunnels[0].tls.session_resumption);
  CHECK(from_flags.tunnels[0].tls.session_ticket_lifetime == std::chrono::minutes(30));
}

TEST_CASE("flags not given take the model's defaults") {
  IdentityFiles dir;
  const Config c = finalized(server_flags(dir), Mode::kServer);
  const TunnelConfig& t = c.tunnels.at(0);
  const TunnelConfig defaults;
  CHECK(t.name == "server");
  CHECK(t.tls == defaults.tls);
  CHECK(t.handshake_timeout == defaults.handshake_timeout);
  CHECK(t.connect_timeout == defaults.connect_timeout);
  CHECK(t.idle_timeout == defaults.idle_timeout);
  CHECK(t.max_connections == defaults.max_connections);
  CHECK(t.buffer_size == 64 * 1024);
  CHECK_FALSE(t.opa);
  CHECK(c.log_level == LogLevel::kInfo);
  CHECK(c.threads == 0);
  CHECK_FALSE(c.admin);
  CHECK(finalized(server_flags(dir), Mode::kClient).tunnels.at(0).name == "client");
}

TEST_CASE("global flags override a file's values before the one validation") {
  const std::string yaml = std::string(kWorkloadApiIdentity) + R"(admin: {listen: "127.0.0.1:9901"}
log_level: debug
threads: 4
busy_poll: 200us
tunnels:
  - {name: a, mode: server, listen: ":1", target: ":2", allow: {any: true}}
)";
  auto draft = read_config_text(yaml, "test.yaml");
  REQUIRE(draft.ok());
  auto overrides = read_global_flags(
      {.log_level = "error", .threads = "8", .admin = ":9902", .busy_poll = "1ms"});
  REQUIRE(overrides.ok());
  auto c = finalize(*draft, *overrides);
  REQUIRE(c.ok());
  CHECK(c->log_level == LogLevel::kError);
  CHECK(c->threads == 8);
  CHECK(c->admin->str() == "127.0.0.1:9902");
  CHECK(c->busy_poll == 1000us);

  // Not given: the file's values stay.
  auto kept = finalize(*draft, *read_global_flags({}));
  REQUIRE(kept.ok());
  CHECK(kept->log_level == LogLevel::kDebug);
  CHECK(kept->threads == 4);
  CHECK(kept->admin->str() == "127.0.0.1:9901");
  CHECK(kept->busy_poll == 200us);

  // The draft is still validated with the overrides applied.
  Config no_identity = *draft;
  no_identity.identity = {};
  auto refused = finalize(no_identity, *overrides);
  REQUIRE_FALSE(refused.ok());
  CHECK_THAT(refused.error().message, StartsWith("test.yaml: no identity source"));
}

TEST_CASE("a bad global flag is refused naming the flag") {
  struct Case {
    GlobalFlags flags;
    std::string message;
  };
  const std::vector<Case> cases = {
      {{.busy_poll = "1s"}, "flag --busy-poll: \"1s\" is not a busy-poll window"},
      {{.busy_poll = "50ms"}, "flag --busy-poll: \"50ms\" is longer than 10ms"},
      {{.log_level = "loud"}, "flag --log-level: \"loud\" is not a log level"},
      {{.threads = "5000"}, "flag --threads: threads must be at most 1024"},
      {{.threads = "many"}, "flag --threads: threads must be a number"},
      {{.admin = "localhost"}, "flag --admin: \"localhost\" has no port"},
  };
  for (const auto& c : cases) {
    INFO(c.message);
    auto o = read_global_flags(c.flags);
    REQUIRE_FALSE(o.ok());
    CHECK_THAT(o.error().message, StartsWith(c.message));
  }
}

TEST_CASE("a bad tunnel flag is refused naming the flag") {
  IdentityFiles dir;
  struct Case {
    void (*change)(TunnelFlags&);
    std::string message;
  };
  const std::vector<Case> cases = {
      {[](TunnelFlags& f) { f.peer_ids.push_back("spiffe:/a.test/x"); },
       "flag --allow-id: \"spiffe:/a.test/x\" is not a SPIFFE ID"},
      {[](TunnelFlags& f) { f.peer_trust_domains = {"Bad TD"}; },
       "flag --allow-trust-domain: \"Bad TD\""},
      {[](TunnelFlags& f) { f.peer_patterns = {"spiffe://*.td/x"}; },
       "flag --allow-id-pattern: pattern \"spiffe://*.td/x\": wildcards are not allowed"},
      {[](TunnelFlags& f) { f.listen = "localhost"; }, "flag --listen: \"localhost\" has no port"},
      {[](TunnelFlags& f) { f.target = "db:http"; }, "flag --target: \"db:http\": port"},
      {[](TunnelFlags& f) { f.svid = "spiffe://td/a//b"; }, "flag --svid: \"spiffe://td/a//b\""},
      {[](TunnelFlags& f) { f.bundles = {"Bad_TD=x"}; }, "flag --bundle: "},
      {[](TunnelFlags& f) { f.bundles = {"nofile"}; },
       "flag --bundle \"nofile\": expected TRUST_DOMAIN=FILE"},
      {[](TunnelFlags& f) { f.ktls = "yes"; }, "flag --ktls: ktls \"yes\" is not auto, on or off"},
      {[](TunnelFlags& f) { f.tls_min = "1.1"; },
       "flag --tls-min-version: TLS version \"1.1\" is not 1.2 or 1.3"},
      {[](TunnelFlags& f) { f.tls_max = "1.0"; }, "flag --tls-max-version: TLS version \"1.0\""},
      {[](TunnelFlags& f) { f.handshake_timeout = "soon"; },
       "flag --handshake-timeout: \"soon\" is not a duration"},
      {[](TunnelFlags& f) { f.idle_timeout = "5d"; }, "flag --idle-timeout: \"5d\" has unknown unit"},
      {[](TunnelFlags& f) { f.opa_timeout = "fast"; }, "flag --opa-timeout: \"fast\""},
      {[](TunnelFlags& f) { f.opa_url = "https://opa:1/v1/data/x"; },
       "flag --opa-url: OPA URL \"https://opa:1/v1/data/x\" must start with http://"},
      {[](TunnelFlags& f) { f.max_connections = "0"; },
       "flag --max-connections: max_connections must be positive"},
      {[](TunnelFlags& f) { f.buffer_size = "1024"; },
       "flag --buffer-size: buffer_size must be between 32768 and 16777216"},
      {[](TunnelFlags& f) { f.workload_api = "unix:///a"; },
       "choose either --cert/--key/--bundle or --workload-api, not both"},
      {[](TunnelFlags& f) { f.key.clear(); }, "--cert and --key are both required with files"},
      {[](TunnelFlags& f) { f.peer_ids.clear(); },
       "command line: tunnel \"server\": no peer rule, so every peer would be refused"},
      {[](TunnelFlags& f) { f.tls_max = "1.2"; },
       "command line: tunnel \"server\": TLS minimum version 1.3 is above the maximum 1.2"},
      {[](TunnelFlags& f) { f.session_ticket_lifetime = "8d"; },
       "flag --session-ticket-lifetime: \"8d\" has unknown unit"},
      {[](TunnelFlags& f) { f.session_ticket_lifetime = "200h"; },
       "flag --session-ticket-lifetime: session_ticket_lifetime must be from 1s to 168h"},
      {[](TunnelFlags& f) {
         f.session_resumption = true;
         f.tls_min = "1.2";
         f.tls_max = "1.2";
       },
       "command line: tunnel \"server\": session_resumption is TLS 1.3 only"},
      {[](TunnelFlags& f) { f.proxy_protocol = "v1"; },
       "flag --proxy-protocol: proxy_protocol \"v1\" is not off or v2"},
  };
  for (const auto& c : cases) {
    INFO(c.message);
    TunnelFlags f = server_flags(dir);
    c.change(f);
    CHECK_THAT(flag_error(f), StartsWith(c.message));
  }
  TunnelFlags client = server_flags(dir);
  client.peer_ids = {"spiffe://TD/x"};
  CHECK_THAT(flag_error(client, Mode::kClient), StartsWith("flag --expect-id: "));
  client = server_flags(dir);
  client.proxy_protocol = "v2";
  CHECK_THAT(flag_error(client, Mode::kClient),
             StartsWith("command line: tunnel \"client\": proxy_protocol is for server tunnels"));
  TunnelFlags server = server_flags(dir);
  server.proxy_protocol = "v2";
  CHECK(finalized(server, Mode::kServer).tunnels[0].proxy_protocol == ProxyProtocol::kV2);
}

TEST_CASE("OPA alone is a peer rule, and its timeout must be positive") {
  IdentityFiles dir;
  TunnelFlags f = server_flags(dir);
  f.peer_ids.clear();
  f.opa_url = "http://[::1]:8181/v1/data/x";
  const Config c = finalized(f, Mode::kServer);
  REQUIRE(c.tunnels[0].opa);
  CHECK(c.tunnels[0].opa->endpoint == OpaEndpoint{"::1", 8181, "/v1/data/x"});
  CHECK(c.tunnels[0].opa->timeout == 2s);
  CHECK(c.tunnels[0].opa->cache_ttl == 30s);
  f.opa_timeout = "0";
  CHECK_THAT(flag_error(f), Contains("the OPA timeout must be positive"));
}

TEST_CASE("The --key-permissions flag sets how an open key file is treated") {
  TempDir dir;
  for (const char* name : {"svid.pem", "key.pem", "bundle.pem"}) {
    dir.write(name, "placeholder\n");
  }
  TunnelFlags f = server_flags(dir);
  CHECK(finalized(f, Mode::kServer).identity.key_permissions == KeyPermissions::kStrict);
  f.key_permissions = "warn";
  CHECK(finalized(f, Mode::kServer).identity.key_permissions == KeyPermissions::kWarn);
  f.key_permissions = "off";
  auto bad = read_tunnel_flags(f, Mode::kServer);
  REQUIRE_FALSE(bad.ok());
  CHECK_THAT(bad.error().message, StartsWith("flag --key-permissions: \"off\""));
}
