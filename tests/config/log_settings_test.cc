// log_format, log_sessions and --log-format / --log-level against the file's values.
#include <string>

#include <catch2/catch.hpp>

#include "config/config_test_support.h"
#include "spiffe_tunnel/config/flags.h"

using namespace spiffe_tunnel::config;
using namespace spiffe_tunnel::config::testing;
using Catch::Matchers::Contains;
using Catch::Matchers::StartsWith;

namespace {

const std::string kTunnels = R"(tunnels:
  - {name: a, mode: server, listen: ":1", target: ":2", allow: {any: true}}
  - {name: b, mode: server, listen: ":3", target: ":4", allow: {any: true}, log_sessions: true}
)";

}  // namespace

TEST_CASE("logs default to text with session lines on") {
  const Config c = load_ok(std::string(kWorkloadApiIdentity) + kTunnels);
  CHECK(c.log_format == LogFormat::kText);
  CHECK(c.log_sessions);
  CHECK(c.tunnels[0].log_sessions == true);
}

TEST_CASE("log_sessions is global, and a tunnel may set its own") {
  const Config c = load_ok(std::string(kWorkloadApiIdentity) +
                           "log_format: json\nlog_sessions: false\n" + kTunnels);
  CHECK(c.log_format == LogFormat::kJson);
  CHECK(c.tunnels[0].log_sessions == false);  // the global value
  CHECK(c.tunnels[1].log_sessions == true);   // its own
}

TEST_CASE("bad log settings are refused with file:line:column") {
  CHECK_THAT(error_of(std::string(kWorkloadApiIdentity) + "log_format: xml\n" + kTunnels),
             StartsWith("test.yaml:3:13: log_format: \"xml\" is not a log format (text or json)"));
  CHECK_THAT(error_of(std::string(kWorkloadApiIdentity) + "log_sessions: maybe\n" + kTunnels),
             StartsWith("test.yaml:3:15: log_sessions must be true or false"));
  CHECK_THAT(
      error_of(std::string(kWorkloadApiIdentity) +
               "tunnels:\n  - {name: a, mode: server, listen: \":1\", target: \":2\", "
               "allow: {any: true}, log_sessions: [x]}\n"),
      Contains("tunnel \"a\": log_sessions must be true or false"));
}

TEST_CASE("the flags --log-format and --log-level win over the file") {
  auto draft = read_config_text(std::string(kWorkloadApiIdentity) +
                                    "log_level: warn\nlog_format: text\n" + kTunnels,
                                "test.yaml");
  REQUIRE(draft.ok());
  auto o = read_global_flags({.log_level = "debug", .log_format = "json"});
  REQUIRE(o.ok());
  auto c = finalize(*draft, *o);
  REQUIRE(c.ok());
  CHECK(c->log_level == LogLevel::kDebug);
  CHECK(c->log_format == LogFormat::kJson);

  auto bad = read_global_flags({.log_format = "yaml"});
  REQUIRE_FALSE(bad.ok());
  CHECK_THAT(bad.error().message, StartsWith("flag --log-format: \"yaml\" is not a log format"));
}

TEST_CASE("max_connection_age is off by default, global, and a tunnel may set its own") {
  using namespace std::chrono_literals;
  const Config off = load_ok(std::string(kWorkloadApiIdentity) + kTunnels);
  CHECK(off.tunnels[0].max_connection_age == 0ms);
  const Config c = load_ok(std::string(kWorkloadApiIdentity) + "max_connection_age: 24h\n" +
                           R"(tunnels:
  - {name: a, mode: server, listen: ":1", target: ":2", allow: {any: true}}
  - {name: b, mode: server, listen: ":3", target: ":4", allow: {any: true}, max_connection_age: 0}
  - {name: c, mode: server, listen: ":5", target: ":6", allow: {any: true}, max_connection_age: 90s}
)");
  CHECK(c.tunnels[0].max_connection_age == 24h);  // the global value
  CHECK(c.tunnels[1].max_connection_age == 0ms);  // turned off
  CHECK(c.tunnels[2].max_connection_age == 90s);
  CHECK_THAT(error_of(std::string(kWorkloadApiIdentity) + "max_connection_age: soon\n" + kTunnels),
             StartsWith("test.yaml:3:21: max_connection_age: "));
}

TEST_CASE("the flag --max-connection-age sets the tunnel's limit in server and client mode") {
  using namespace std::chrono_literals;
  for (const Mode mode : {Mode::kServer, Mode::kClient}) {
    TunnelFlags f;
    f.listen = ":1";
    f.target = ":2";
    f.workload_api = "unix:///run/spire/agent.sock";
    f.use_workload_api = true;
    f.allow_any = true;
    f.max_connection_age = "12h";
    auto draft = read_tunnel_flags(f, mode);
    REQUIRE(draft.ok());
    auto c = finalize(*draft, {});
    INFO((c.ok() ? "" : c.error().message));
    REQUIRE(c.ok());
    CHECK(c->tunnels[0].max_connection_age == 12h);
  }
  TunnelFlags bad;
  bad.max_connection_age = "12 hours";
  bad.listen = ":1";
  bad.target = ":2";
  auto refused = read_tunnel_flags(bad, Mode::kServer);
  REQUIRE_FALSE(refused.ok());
  CHECK_THAT(refused.error().message, StartsWith("flag --max-connection-age: "));
}
