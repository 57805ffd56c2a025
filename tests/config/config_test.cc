#include "spiffe_tunnel/config/config.h"

#include <algorithm>
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

TEST_CASE("loads a full configuration with server and client tunnels") {
  IdentityFiles dir;
  const Config c = load_ok(with_dir(R"(identity:
  files:
    cert: {dir}/svid.pem
    key: {dir}/key.pem
    bundles:
      example.org: {dir}/bundle.pem
      partner.example: {dir}/partner.json
admin:
  listen: 127.0.0.1:9090
log_level: debug
threads: 4
drain_timeout: 30s
tunnels:
  - name: kafka-in
    mode: server
    listen: 0.0.0.0:9093
    target: 127.0.0.1:9092
    svid:
      id: spiffe://example.org/kafka
    allow:
      ids: [spiffe://example.org/producer, spiffe://example.org/admin]
      trust_domains:
        - partner.example
      patterns: ["spiffe://example.org/ns/*/sa/consumer-*"]
    tls:
      min_version: "1.2"
      max_version: "1.3"
      cipher_suites: TLS_AES_256_GCM_SHA384
      ciphers: ECDHE-ECDSA-AES256-GCM-SHA384
      ktls: off
    timeouts:
      handshake: 5s
      connect: 250ms
      idle: 5m
    max_connections: 100
  - name: db-out
    mode: client
    listen: :15432
    target: "[::1]:5432"
    svid:
      hint: internal
    expect:
      ids: spiffe://example.org/db
    tls:
      server_name: db.example.org
  - mode: server
    listen: "[::]:8443"
    target: localhost:8080
    allow:
      any: true
)",
                                    dir.str()));

  CHECK(c.identity.kind == IdentityConfig::Kind::kFiles);
  CHECK(c.identity.cert_file == dir.path("svid.pem"));
  CHECK(c.identity.key_file == dir.path("key.pem"));
  REQUIRE(c.identity.bundle_files.size() == 2);
  CHECK(c.identity.bundle_files[0].first.name() == "example.org");
  CHECK(c.identity.bundle_files[0].second == dir.path("bundle.pem"));
  CHECK(c.identity.bundle_files[1].first.name() == "partner.example");
  REQUIRE(c.admin);
  CHECK(c.admin->str() == "127.0.0.1:9090");
  CHECK(c.log_level == LogLevel::kDebug);
  CHECK(c.threads == 4);
  CHECK(c.drain_timeout == 30s);
  REQUIRE(c.tunnels.size() == 3);

  const auto& kafka = c.tunnels[0];
  CHECK(kafka.name == "kafka-in");
  CHECK(kafka.mode == Mode::kServer);
  CHECK(kafka.origin == "test.yaml:14:5");
  CHECK(kafka.listen.str() == "0.0.0.0:9093");
  CHECK(kafka.target.str() == "127.0.0.1:9092");
  REQUIRE(kafka.svid_id);
  CHECK(kafka.svid_id->str() == "spiffe://example.org/kafka");
  CHECK_FALSE(kafka.svid_hint);
  REQUIRE(kafka.peers.ids.size() == 2);
  CHECK(kafka.peers.ids[1].str() == "spiffe://example.org/admin");
  REQUIRE(kafka.peers.trust_domains.size() == 1);
  CHECK(kafka.peers.trust_domains[0].name() == "partner.example");
  REQUIRE(kafka.peers.patterns.size() == 1);
  CHECK(kafka.peers.patterns[0].text() == "spiffe://example.org/ns/*/sa/consumer-*");
  CHECK_FALSE(kafka.peers.any);
  CHECK(kafka.tls.min_version == TlsVersion::k1_2);
  CHECK(kafka.tls.max_version == TlsVersion::k1_3);
  CHECK(kafka.tls.tls13_ciphersuites == "TLS_AES_256_GCM_SHA384");
  CHECK(kafka.tls.tls12_ciphers == "ECDHE-ECDSA-AES256-GCM-SHA384");
  CHECK(kafka.tls.ktls == KtlsMode::kOff);
  CHECK(kafka.handshake_timeout == 5s);
  CHECK(kafka.connect_timeout == 250ms);
  CHECK(kafka.idle_timeout == 5min);
  CHECK(kafka.max_connections == 100);

  const auto& db = c.tunnels[1];
  CHECK(db.mode == Mode::kClient);
  CHECK(db.listen.str() == "127.0.0.1:15432");
  CHECK(db.target.str() == "[::1]:5432");
  CHECK(db.svid_hint == "internal");
  REQUIRE(db.peers.ids.size() == 1);
  CHECK(db.peers.ids[0].str() == "spiffe://example.org/db");
  CHECK(db.tls.server_name == "db.example.org");
  // Defaults.
  CHECK(db.tls.min_version == TlsVersion::k1_3);
  CHECK(db.tls.ktls == KtlsMode::kAuto);
  CHECK(db.buffer_size == 64 * 1024);
  CHECK(db.tls.key_update_records == 8388608);  // 2^23
  CHECK_FALSE(db.tls.session_resumption);
  CHECK(db.tls.session_ticket_lifetime == 1h);
  CHECK_FALSE(db.opa);
  CHECK(db.handshake_timeout == 10s);
  CHECK(db.idle_timeout == 0ms);
  CHECK(db.max_connections == 10000);

  const auto& unnamed = c.tunnels[2];
  CHECK(unnamed.name == "tunnel-3");
  CHECK(unnamed.listen.tcp()->host == "::");
  CHECK(unnamed.listen.tcp()->port == 8443);
  CHECK(unnamed.target.tcp()->host == "localhost");
  CHECK(unnamed.peers.any);
}

TEST_CASE("loads a Workload API identity, with or without an endpoint") {
  const Config c = load_ok(std::string(kWorkloadApiIdentity) + R"(tunnels:
  - {name: a, mode: client, listen: ":1000", target: "db:5432", expect: {trust_domains: [td]}}
)");
  CHECK(c.identity.kind == IdentityConfig::Kind::kWorkloadApi);
  CHECK(c.identity.workload_api == "unix:///run/spire/agent.sock");
  CHECK(c.threads == 0);
  CHECK(c.drain_timeout == 15s);
  CHECK(c.busy_poll == 0us);
  CHECK_FALSE(c.admin);
  CHECK(c.log_level == LogLevel::kInfo);

  const Config from_env = load_ok(R"(identity:
  workload_api:
tunnels:
  - {mode: server, listen: ":1000", target: ":2000", allow: {patterns: "spiffe://td/**"}}
)");
  CHECK(from_env.identity.kind == IdentityConfig::Kind::kWorkloadApi);
  CHECK(from_env.identity.workload_api.empty());
}

TEST_CASE("loads a configuration file from disk and names it in errors") {
  TempDir dir;
  const std::string good = dir.write("good.yaml", std::string(kWorkloadApiIdentity) + R"(tunnels:
  - {mode: server, listen: ":1000", target: ":2000", allow: {any: true}}
)");
  auto c = load_config_file(good);
  REQUIRE(c.ok());
  CHECK(c->tunnels[0].origin == good + ":4:5");

  const std::string bad = dir.write("bad.yaml", std::string(kWorkloadApiIdentity) + "tunnels: 5\n");
  auto e = load_config_file(bad);
  REQUIRE_FALSE(e.ok());
  CHECK_THAT(e.error().message, StartsWith(bad + ":3:10: "));

  auto missing = load_config_file(dir.path("missing.yaml"));
  REQUIRE_FALSE(missing.ok());
  CHECK_THAT(missing.error().message, Contains("cannot read config file"));
  CHECK_THAT(missing.error().message, Contains("missing.yaml"));
}

namespace {

struct ErrorCase {
  std::string what;
  std::string yaml;    // the text, or the part of it that the test case adds to
  std::string where;   // expected "test.yaml:L:C"
  std::string reason;  // expected substring
};

}  // namespace

TEST_CASE("every error names the file, line and column of the bad value") {
  // Each case's yaml follows a valid Workload API identity (lines 1-2).
  const std::vector<ErrorCase> cases = {
      {"unknown top-level key", "tunels:\n  - {}\n", "test.yaml:3:1",
       "unknown key \"tunels\" in the top level (expected one of: identity, tunnels, admin"},
      {"unknown tunnel key",
       R"(tunnels:
  - name: web
    mode: server
    listne: :8443
)",
       "test.yaml:6:5", "unknown key \"listne\" in tunnel #1"},
      {"unknown key in allow",
       kWebServer + R"(    allow: {id: spiffe://td/x}
)",
       "test.yaml:8:13", "unknown key \"id\" in tunnel \"web\" allow"},
      {"wrong mode",
       R"(tunnels:
  - name: web
    mode: proxy
    listen: :8443
)",
       "test.yaml:5:11", "tunnel \"web\": mode \"proxy\" is neither \"server\" nor \"client\""},
      {"missing mode",
       R"(tunnels:
  - name: web
    listen: :8443
)",
       "test.yaml:4:5", "tunnel \"web\": \"mode\" is required"},
      {"bad listen",
       R"(tunnels:
  - name: web
    mode: server
    listen: localhost
)",
       "test.yaml:6:13", "tunnel \"web\": listen: \"localhost\" has no port"},
      {"bad target",
       R"(tunnels:
  - name: web
    mode: server
    listen: :8443
    target: db:http
)",
       "test.yaml:7:13", "tunnel \"web\": target: \"db:http\": port \"http\" is not a number"},
      {"bad SPIFFE ID in allow.ids points at the entry",
       kWebServer + R"(    allow:
      ids:
        - spiffe://td/good
        - spiffe:/td/bad
)",
       "test.yaml:11:11", "tunnel \"web\" allow.ids: \"spiffe:/td/bad\" is not a SPIFFE ID"},
      {"bad SPIFFE ID in a flow list points at the entry",
       R"(tunnels:
  - name: web
    mode: client
    listen: :8443
    target: :8080
    expect: {ids: [spiffe://td/good, "spiffe://TD/bad"]}
)",
       "test.yaml:8:38", "tunnel \"web\" expect.ids: \"spiffe://TD/bad\" is not a SPIFFE ID"},
      {"bad trust domain",
       kWebServer + R"(    allow: {trust_domains: [good.example, "bad domain"]}
)",
       "test.yaml:8:43", "allow.trust_domains: \"bad domain\" is not a trust domain name"},
      {"bad pattern",
       kWebServer + R"(    allow:
      patterns: spiffe://*.td/x
)",
       "test.yaml:9:17", "allow.patterns: pattern \"spiffe://*.td/x\": wildcards are not allowed"},
      {"expect on a server tunnel",
       kWebServer + R"(    expect: {ids: [spiffe://td/x]}
)",
       "test.yaml:8:13",
       "tunnel \"web\": a server tunnel lists its peers under \"allow\", not \"expect\""},
      {"allow on a client tunnel",
       R"(tunnels:
  - name: web
    mode: client
    listen: :8443
    target: :8080
    allow: {any: true}
)",
       "test.yaml:8:12",
       "tunnel \"web\": a client tunnel lists its peers under \"expect\", not \"allow\""},
      {"allow.any not a boolean",
       R"(tunnels:
  - {name: web, mode: server, listen: ":1", target: ":2", allow: {any: perhaps}}
)",
       "test.yaml:4:72", "allow.any must be true or false"},
      {"duplicate names",
       R"(tunnels:
  - {name: web, mode: server, listen: ":1", target: ":2", allow: {any: true}}
  - {name: web, mode: server, listen: ":3", target: ":4", allow: {any: true}}
)",
       "test.yaml:5:5", "tunnel \"web\": the name is used by another tunnel"},
      {"duplicate listen",
       R"(tunnels:
  - {name: a, mode: server, listen: "127.0.0.1:1", target: ":2", allow: {any: true}}
  - {name: b, mode: client, listen: ":1", target: ":4", expect: {any: true}}
)",
       "test.yaml:5:5", "tunnel \"b\": listen address 127.0.0.1:1 is used by another tunnel"},
      {"no peer rule",
       kWebServer,
       "test.yaml:4:5", "tunnel \"web\": no peer rule, so every peer would be refused"},
      {"any: false is no peer rule",
       R"(tunnels:
  - {name: web, mode: server, listen: ":1", target: ":2", allow: {any: false}}
)",
       "test.yaml:4:5", "no peer rule"},
      {"svid id and hint",
       kWebServer + R"(    svid: {id: "spiffe://td/web", hint: internal}
    allow: {any: true}
)",
       "test.yaml:4:5", "tunnel \"web\": choose the SVID by id or by hint, not both"},
      {"bad svid id",
       kWebServer + R"(    svid:
      id: spiffe://td/a//b
)",
       "test.yaml:9:11", "tunnel \"web\": svid.id: \"spiffe://td/a//b\" is not a SPIFFE ID"},
      {"bad duration",
       kWebServer + R"(    timeouts:
      handshake: soon
)",
       "test.yaml:9:18", "handshake: \"soon\" is not a duration"},
      {"bad duration unit",
       kWebServer + R"(    timeouts: {idle: 5d}
)",
       "test.yaml:8:22", "idle: \"5d\" has unknown unit \"d\""},
      {"zero handshake timeout",
       kWebServer + R"(    timeouts: {handshake: 0s}
    allow: {any: true}
)",
       "test.yaml:4:5", "handshake and connect timeouts must be positive"},
      {"bad drain timeout", "drain_timeout: -1s\ntunnels: []\n", "test.yaml:3:16",
       "drain_timeout: \"-1s\" is not a duration"},
      {"max_connections zero",
       kWebServer + R"(    max_connections: 0
)",
       "test.yaml:8:22", "tunnel \"web\": max_connections must be positive"},
      {"max_connections negative",
       kWebServer + R"(    max_connections: -5
)",
       "test.yaml:8:22", "tunnel \"web\": max_connections must be positive"},
      {"max_connections not a number",
       kWebServer + R"(    max_connections: lots
)",
       "test.yaml:8:22", "tunnel \"web\": max_connections must be a number"},
      {"bad TLS version",
       kWebServer + R"(    tls: {min_version: "1.1"}
    allow: {any: true}
)",
       "test.yaml:8:24", "tunnel \"web\": TLS version \"1.1\" is not 1.2 or 1.3"},
      {"min version above max",
       kWebServer + R"(    tls: {max_version: "1.2"}
    allow: {any: true}
)",
       "test.yaml:4:5", "TLS minimum version 1.3 is above the maximum 1.2"},
      {"bad ktls mode",
       R"(tunnels:
  - {name: web, mode: server, listen: ":1", target: ":2", allow: {any: true}, tls: {ktls: yes}}
)",
       "test.yaml:4:91", "tunnel \"web\": ktls \"yes\" is not auto, on or off"},
      {"bad TLS maximum version",
       kWebServer + R"(    tls:
      max_version: TLSv1.3
)",
       "test.yaml:9:20", "tunnel \"web\": TLS version \"TLSv1.3\" is not 1.2 or 1.3"},
      {"bad log level", "log_level: loud\ntunnels: []\n", "test.yaml:3:12",
       "log_level: \"loud\" is not a log level"},
      {"bad admin address", "admin: {listen: localhost}\ntunnels: []\n", "test.yaml:3:17",
       "admin.listen: \"localhost\" has no port"},
      {"buffer_size out of range",
       kWebServer + R"(    buffer_size: 1024
)",
       "test.yaml:8:18", "tunnel \"web\": buffer_size must be between 32768 and 16777216"},
      {"key_update_records below the minimum",
       kWebServer + R"(    tls: {key_update_records: 1}
)",
       "test.yaml:8:31",
       "tunnel \"web\": key_update_records must be a number of records from 2 to 16777216 (2^24; "
       "RFC 8446 §5.5 allows AES-GCM about 2^24.5)"},
      {"key_update_records above RFC 8446's limit",
       kWebServer + R"(    tls: {key_update_records: 33554432}
)",
       "test.yaml:8:31",
       "tunnel \"web\": key_update_records must be a number of records from 2 to 16777216 (2^24; "
       "RFC 8446 §5.5 allows AES-GCM about 2^24.5)"},
      {"session_resumption not a boolean",
       kWebServer + R"(    tls: {session_resumption: maybe}
)",
       "test.yaml:8:31", "tunnel \"web\": session_resumption must be true or false"},
      {"session_ticket_lifetime too short",
       kWebServer + R"(    tls: {session_ticket_lifetime: 500ms}
)",
       "test.yaml:8:36",
       "tunnel \"web\": session_ticket_lifetime must be from 1s to 168h (7 days, the most TLS 1.3 "
       "allows)"},
      {"buffer_size not a number",
       kWebServer + R"(    buffer_size: big
)",
       "test.yaml:8:18", "tunnel \"web\": buffer_size must be a number of bytes"},
      {"OPA URL that is not http",
       kWebServer + R"(    opa:
      url: https://127.0.0.1:8181/v1/data/x
)",
       "test.yaml:9:12", "tunnel \"web\": OPA URL \"https://127.0.0.1:8181/v1/data/x\" must start "
                         "with http://"},
      {"OPA URL outside the data API",
       kWebServer + R"(    opa: {url: "http://127.0.0.1:8181/v1/policies"}
)",
       "test.yaml:8:16", "the path must be a data API path"},
      {"OPA URL without a port",
       kWebServer + R"(    opa: {url: "http://opa/v1/data/x"}
)",
       "test.yaml:8:16", "OPA URL \"http://opa/v1/data/x\" needs host:port"},
      {"OPA without a URL",
       kWebServer + R"(    opa: {timeout: 1s}
)",
       "test.yaml:8:10", "tunnel \"web\": opa.url is required"},
      {"zero OPA timeout",
       kWebServer + R"(    opa: {url: "http://127.0.0.1:8181/v1/data/x", timeout: 0s}
)",
       "test.yaml:4:5", "tunnel \"web\": the OPA timeout must be positive"},
      {"target without a port",
       R"(tunnels:
  - {name: web, mode: server, listen: ":1", target: "db:0", allow: {any: true}}
)",
       "test.yaml:4:5", "target db:0 needs a port"},
      {"tunnels not a list", "tunnels: 5\n", "test.yaml:3:10", "\"tunnels\" must be a non-empty list"},
      {"tunnels empty", "tunnels: []\n", "test.yaml:3:10", "\"tunnels\" must be a non-empty list"},
      {"tunnels missing", "log_level: info\n", "test.yaml:1:1", "\"tunnels\" must be a non-empty list"},
      {"a tunnel that is not a mapping", "tunnels: [1, 2]\n", "test.yaml:3:11",
       "\"tunnel #1\" must be a mapping"},
      {"a list of IDs that is a mapping", R"(tunnels:
  - {name: web, mode: server, listen: ":1", target: ":2", allow: {ids: {a: b}}}
)",
       "test.yaml:4:72", "\"ids\" must be a list"},
      {"a list entry that is not a value", R"(tunnels:
  - {name: web, mode: server, listen: ":1", target: ":2", allow: {ids: [[spiffe://td/x]]}}
)",
       "test.yaml:4:73", "entries of \"ids\" must be single values"},
      {"a name that is a list", R"(tunnels:
  - {name: [a, b], mode: server, listen: ":1", target: ":2", allow: {any: true}}
)",
       "test.yaml:4:12", "\"name\" must be a single value"},
      {"a listen address that is a mapping", R"(tunnels:
  - {mode: server, listen: {host: a}, target: ":2", allow: {any: true}}
)",
       "test.yaml:4:28", "\"listen\" must be a single value"},
      {"tls that is a value", R"(tunnels:
  - {name: web, mode: server, listen: ":1", target: ":2", allow: {any: true}, tls: strict}
)",
       "test.yaml:4:84", "\"tunnel \"web\" tls\" must be a mapping"},
      {"a TLS setting that is a list", R"(tunnels:
  - {name: web, mode: server, listen: ":1", target: ":2", allow: {any: true}, tls: {ktls: [on]}}
)",
       "test.yaml:4:91", "\"ktls\" must be a single value"},
      {"threads not a number", "threads: many\ntunnels: []\n", "test.yaml:3:10",
       "threads must be a number"},
      {"threads negative", "threads: -1\ntunnels: []\n", "test.yaml:3:10",
       "threads must be a number"},
      {"threads huge", "threads: 18446744073709551615\ntunnels: []\n", "test.yaml:3:10",
       "threads must be at most 1024"},
      {"threads beyond 64 bits", "threads: 99999999999999999999999\ntunnels: []\n",
       "test.yaml:3:10", "threads must be a number"},
      {"admin that is a value", "admin: 9090\ntunnels: []\n", "test.yaml:3:8",
       "\"admin\" must be a mapping"},
      {"busy_poll without a unit", "busy_poll: 200\ntunnels: []\n", "test.yaml:3:12",
       "busy_poll: \"200\" is not a busy-poll window"},
      {"busy_poll too long", "busy_poll: 1s\ntunnels: []\n", "test.yaml:3:12",
       "busy_poll: \"1s\" is not a busy-poll window"},
      {"busy_poll over the limit", "busy_poll: 11ms\ntunnels: []\n", "test.yaml:3:12",
       "busy_poll: \"11ms\" is longer than 10ms"},
      {"busy_poll that is a list", "busy_poll: [1ms]\ntunnels: []\n", "test.yaml:3:12",
       "\"busy_poll\" must be a single value"},
  };
  for (const auto& c : cases) {
    INFO(c.what);
    const std::string message = error_of(kWorkloadApiIdentity + c.yaml);
    CHECK_THAT(message, StartsWith(c.where + ": "));
    CHECK_THAT(message, Contains(c.reason));
  }
}

TEST_CASE("identity errors name where the identity was configured") {
  IdentityFiles dir;
  const std::string tunnels = R"(tunnels:
  - {mode: server, listen: ":1", target: ":2", allow: {any: true}}
)";
  const std::vector<ErrorCase> cases = {
      {"no identity", "", "test.yaml:1:1", "no identity source"},
      {"both sources", R"(identity:
  workload_api: unix:///a
  files: {cert: {dir}/svid.pem, key: {dir}/key.pem, bundles: {td: {dir}/bundle.pem}}
)",
       "test.yaml:2:3", "identity: choose either workload_api or files, not both"},
      {"unknown identity key", "identity:\n  spire: unix:///a\n", "test.yaml:2:3",
       "unknown key \"spire\" in identity"},
      {"files without bundles", R"(identity:
  files:
    cert: {dir}/svid.pem
    key: {dir}/key.pem
)",
       "test.yaml:3:5", "identity.files needs cert, key and bundles"},
      {"missing certificate file", R"(identity:
  files:
    cert: {dir}/nope.pem
    key: {dir}/key.pem
    bundles: {td: {dir}/bundle.pem}
)",
       "test.yaml:3:11", "certificate file {dir}/nope.pem: No such file or directory"},
      {"missing key file", R"(identity:
  files:
    cert: {dir}/svid.pem
    key: {dir}/nope.pem
    bundles: {td: {dir}/bundle.pem}
)",
       "test.yaml:4:10", "private key file {dir}/nope.pem: No such file or directory"},
      {"missing bundle file", R"(identity:
  files:
    cert: {dir}/svid.pem
    key: {dir}/key.pem
    bundles:
      td: {dir}/bundle.pem
      partner: {dir}/partner.pem
)",
       "test.yaml:7:16", "bundle file {dir}/partner.pem: No such file or directory"},
      {"empty bundle map", R"(identity:
  files:
    cert: {dir}/svid.pem
    key: {dir}/key.pem
    bundles: {}
)",
       "test.yaml:5:14", "identity.files.bundles is empty"},
      {"bundles as a list", R"(identity:
  files:
    cert: {dir}/svid.pem
    key: {dir}/key.pem
    bundles: [{dir}/bundle.pem]
)",
       "test.yaml:5:14", "identity.files.bundles must map trust domain"},
      {"bad bundle trust domain", R"(identity:
  files:
    cert: {dir}/svid.pem
    key: {dir}/key.pem
    bundles: {"spiffe://TD": {dir}/bundle.pem}
)",
       "test.yaml:5:15", "identity.files.bundles: \"spiffe://TD\""},
      {"workload_api as a list", "identity:\n  workload_api: [unix:///a]\n", "test.yaml:2:17",
       "\"workload_api\" must be a single value"},
  };
  const std::string d = dir.str();
  for (const auto& c : cases) {
    INFO(c.what);
    const std::string message = error_of(with_dir(c.yaml, d) + tunnels);
    CHECK_THAT(message, StartsWith(c.where + ": "));
    CHECK_THAT(message, Contains(with_dir(c.reason, d)));
  }
}

TEST_CASE("an empty file is refused as empty") {
  for (const std::string text : {"", "\n\n", "# only a comment\n", "---\n", "~\n"}) {
    INFO("text: " << text);
    CHECK(error_of(text) == "test.yaml: the file is empty");
  }
}

TEST_CASE("a YAML syntax error names its line and column") {
  const std::string message = error_of(std::string(kWorkloadApiIdentity) + R"(tunnels:
  - name: web
    mode: server: client
)");
  CHECK_THAT(message, StartsWith("test.yaml:5:17: YAML syntax error: "));

  const std::string flow = error_of("tunnels: [a, b\nlog_level: info\n");
  CHECK_THAT(flow, Contains("YAML syntax error"));

  const std::string bad_indent = error_of("identity:\n  workload_api: x\n bad: 1\n");
  CHECK_THAT(bad_indent, StartsWith("test.yaml:3:"));
  CHECK_THAT(bad_indent, Contains("YAML syntax error"));
}

TEST_CASE("odd YAML is refused with an error and never throws") {
  // The start of a server tunnel in flow style; cases add keys and close it.
  const std::string kTunnel =
      "identity: {workload_api: x}\ntunnels: [{mode: server, listen: ':1', target: ':2', ";
  const std::vector<std::string> texts = {
      "tunnels: 5\n",
      "tunnels: [1, 2]\n",
      "tunnels: {a: b}\n",
      "tunnels: [[]]\n",
      "tunnels: [~]\n",
      "tunnels: [{allow: {ids: {a: b}}}]\n",
      "42\n",
      "just a string\n",
      "[1, 2, 3]\n",
      "identity: 5\ntunnels: []\n",
      "identity: [a]\n",
      "identity: {files: 5}\n",
      "identity: {files: {cert: [a], key: {b: c}, bundles: {td: [x]}}}\n",
      "identity: {files: {cert: a, key: b, bundles: {[x]: y}}}\n",
      "identity: {workload_api: {a: b}}\n",
      "? [a, b]\n: c\n",
      "{[a]: b}\n",
      "identity: {workload_api: x}\ntunnels: [{mode: [server]}]\n",
      "identity: {workload_api: x}\ntunnels: [{mode: server, listen: [a]}]\n",
      kTunnel + "svid: 5}]\n",
      kTunnel + "svid: {id: [a]}}]\n",
      kTunnel + "allow: 5}]\n",
      kTunnel + "allow: {any: [true]}}]\n",
      kTunnel + "timeouts: [1s]}]\n",
      kTunnel + "timeouts: {idle: {a: b}}}]\n",
      kTunnel + "max_connections: [1]}]\n",
      kTunnel + "max_connections: 99999999999999999999999}]\n",
      kTunnel + "max_connections: 1.5}]\n",
      kTunnel + "buffer_size: 1e99}]\n",
      kTunnel + "tls: {ktls: {on: off}}}]\n",
      kTunnel + "tls: {min_version: 1.3.0}}]\n",
      kTunnel + "opa: 5}]\n",
      kTunnel + "opa: {url: [http://a:1/v1/data]}}]\n",
      kTunnel + "opa: {url: \"http://[::1:8181/v1/data/x\"}}]\n",
      "identity: {workload_api: x}\nadmin: {listen: [a]}\ntunnels: []\n",
      "identity: {workload_api: x}\nlog_level: {a: b}\ntunnels: []\n",
      "identity: {workload_api: x}\ntunnels: [{mode: server, listen: ':99999999', target: "
      "':2'}]\n",
      "identity: {workload_api: x}\ntunnels: [{mode: server, listen: ':-1', target: ':2'}]\n",
      "identity: {workload_api: x}\ntunnels: [{mode: server, listen: '[::1', target: ':2'}]\n",
      "identity: {workload_api: x}\ntunnels: [{mode: server, listen: '[]:', target: ':2'}]\n",
      kTunnel + "timeouts: {idle: 999999999999h}}]\n",
      kTunnel + "timeouts: {idle: 9999999999999999999999s}}]\n",
      "identity: {workload_api: x}\ntunnels: [{name: \"k\xc3\xa4" "fka\xe2\x9c\x93\", mode: "
      "s\xc3\xa9" "rver}]\n",
      kTunnel + "allow: {ids: \"spiffe://t\xc3\xa9" "st/x\"}}]\n",
      kTunnel + "allow: {patterns: \"spiffe://td/\xf0\x9f\x90\x9b\"}}]\n",
      "identity: {workload_api: x}\nthreads: 1e99\ntunnels: []\n",
      "identity: {workload_api: x}\nthreads: {a: 1}\ntunnels: []\n",
      "identity: {workload_api: x}\ndrain_timeout: [1s]\ntunnels: []\n",
      "identity: &a {workload_api: x}\ntunnels: *a\n",
      "identity: {workload_api: *unknown}\n",
      "identity: {workload_api: x}\ntunnels:\n  - &t {mode: server}\n  - *t\n",
      "\xff\xfe\x00\x01",
      std::string("tunnels: [\"a\0b\"]\n", 17),
      std::string(5000, '[') + std::string(5000, ']'),
      std::string(5000, '{'),
      "%YAML 9.9\n---\na: b\n",
      "a: !!binary garbage\n",
      "---\na: 1\n---\nb: 2\n",
  };
  for (const auto& text : texts) {
    INFO("text: " << text.substr(0, 200));
    std::string message;
    REQUIRE_NOTHROW([&] {
      auto c = load_config_text(text, "odd.yaml");
      REQUIRE_FALSE(c.ok());
      message = c.error().message;
    }());
    CHECK_THAT(message, StartsWith("odd.yaml"));
  }
}

TEST_CASE("busy_poll is a top-level setting") {
  const Config c = load_ok(std::string(kWorkloadApiIdentity) + R"(busy_poll: 200us
tunnels:
  - {name: a, mode: client, listen: ":1000", target: "db:5432", expect: {trust_domains: [td]}}
)");
  CHECK(c.busy_poll == 200us);
  const Config off = load_ok(std::string(kWorkloadApiIdentity) + R"(busy_poll: "off"
tunnels:
  - {name: a, mode: client, listen: ":1000", target: "db:5432", expect: {trust_domains: [td]}}
)");
  CHECK(off.busy_poll == 0us);
}


TEST_CASE("proxy_protocol is a server tunnel setting, off unless asked for") {
  const auto server = [](const std::string& name, const std::string& port,
                         const std::string& extra) {
    return "  - {name: " + name + ", mode: server, listen: \":" + port +
           "\", target: \"db:5432\", allow: {trust_domains: [td]}" + extra + "}\n";
  };
  const Config c = load_ok(std::string(kWorkloadApiIdentity) + "tunnels:\n" +
                           server("v2", "1000", ", proxy_protocol: v2") +
                           server("plain", "1001", "") +
                           server("off", "1002", ", proxy_protocol: off"));
  CHECK(c.tunnels[0].proxy_protocol == ProxyProtocol::kV2);
  CHECK(c.tunnels[1].proxy_protocol == ProxyProtocol::kOff);
  CHECK(c.tunnels[2].proxy_protocol == ProxyProtocol::kOff);

  CHECK_THAT(error_of(std::string(kWorkloadApiIdentity) + "tunnels:\n" +
                      server("v1", "1000", ", proxy_protocol: v1")),
             StartsWith("test.yaml:4:") && Contains("proxy_protocol \"v1\" is not off or v2"));
  CHECK_THAT(error_of(std::string(kWorkloadApiIdentity) +
                      "tunnels:\n  - {name: out, mode: client, listen: \":1000\", target: "
                      "\"peer:8443\", expect: {trust_domains: [td]}, proxy_protocol: v2}\n"),
             StartsWith("test.yaml:4:5: tunnel \"out\": proxy_protocol is for server tunnels"));
}

TEST_CASE("a file with several broken parts names each of them, one line each") {
  const std::string text =
      "identity:\n"
      "  workload_api: unix:///run/spire/agent.sock\n"
      "log_level: loud\n"
      "tunnels:\n"
      "  - name: a\n"
      "    mode: server\n"
      "    listen: 127.0.0.1:9000\n"
      "    target: 127.0.0.1:9001\n"
      "    allow: { ids: [spiffe://a.test/x] }\n"
      "    max_connections: many\n"
      "  - name: b\n"
      "    mode: server\n"
      "    listen: 127.0.0.1:9002\n"
      "    target: 127.0.0.1:9003\n"
      "    allow: { ids: [spiffe://a.test/x] }\n"
      "  - name: c\n"
      "    mode: sideways\n"
      "    listen: 127.0.0.1:9004\n"
      "    target: 127.0.0.1:9005\n";
  auto c = read_config_text(text, "many.yaml");
  REQUIRE_FALSE(c.ok());
  const std::string& m = c.error().message;
  INFO(m);
  CHECK(std::count(m.begin(), m.end(), '\n') == 2);  // three lines: globals, tunnel a, tunnel c
  CHECK_THAT(m, Contains("many.yaml:3:12: log_level"));
  CHECK_THAT(m, Contains("many.yaml:10:22"));
  CHECK_THAT(m, Contains("many.yaml:17:11"));
  CHECK_THAT(m, !Contains("\"b\""));
}

TEST_CASE("identity.files.key_permissions is strict unless set to warn") {
  IdentityFiles dir;
  const std::string head = R"(identity:
  files:
    cert: {dir}/svid.pem
    key: {dir}/key.pem
    bundles: {td: {dir}/bundle.pem}
)";
  const std::string tunnels = R"(tunnels:
  - {mode: server, listen: ":1", target: ":2", allow: {any: true}}
)";
  const std::string d = dir.str();
  CHECK(load_ok(with_dir(head, d) + tunnels).identity.key_permissions == KeyPermissions::kStrict);
  CHECK(load_ok(with_dir(head + "    key_permissions: warn\n", d) + tunnels)
            .identity.key_permissions == KeyPermissions::kWarn);
  CHECK(load_ok(with_dir(head + "    key_permissions: strict\n", d) + tunnels)
            .identity.key_permissions == KeyPermissions::kStrict);
  const std::string message =
      error_of(with_dir(head + "    key_permissions: loose\n", d) + tunnels);
  CHECK_THAT(message, StartsWith("test.yaml:6:22: "));
  CHECK_THAT(message, Contains("identity.files.key_permissions: \"loose\" is not a key permission "
                               "check (strict or warn)"));
}
