// max_handshakes and max_handshakes_per_source: defaults, the global default, per tunnel values,
// flags, and validation.
#include <string>

#include <catch2/catch.hpp>

#include "config/config_test_support.h"
#include "spiffe_tunnel/config/flags.h"

using namespace spiffe_tunnel::config;
using namespace spiffe_tunnel::config::testing;
using Catch::Matchers::Contains;

TEST_CASE("handshake limits default to 256 and 32, are global, and a tunnel may set its own") {
  const std::string tunnels = R"(tunnels:
  - {name: a, mode: server, listen: ":1", target: ":2", allow: {any: true}}
  - {name: b, mode: server, listen: ":3", target: ":4", allow: {any: true}, max_handshakes: 9,
     max_handshakes_per_source: 3}
)";
  const Config d = load_ok(std::string(kWorkloadApiIdentity) + tunnels);
  CHECK(d.tunnels[0].max_handshakes == 256u);
  CHECK(d.tunnels[0].max_handshakes_per_source == 32u);
  const Config c = load_ok(std::string(kWorkloadApiIdentity) +
                           "max_handshakes: 1000\nmax_handshakes_per_source: 50\n" + tunnels);
  CHECK(c.tunnels[0].max_handshakes == 1000u);
  CHECK(c.tunnels[0].max_handshakes_per_source == 50u);
  CHECK(c.tunnels[1].max_handshakes == 9u);
  CHECK(c.tunnels[1].max_handshakes_per_source == 3u);
  CHECK_THAT(error_of(std::string(kWorkloadApiIdentity) + "max_handshakes: 0\n" + tunnels),
             Contains("max_handshakes: must be positive"));
  CHECK_THAT(error_of(std::string(kWorkloadApiIdentity) + "max_handshakes_per_source: lots\n" +
                      tunnels),
             Contains("max_handshakes_per_source: must be a number"));
}

TEST_CASE("the flags --max-handshakes and --max-handshakes-per-source set the tunnel's limits") {
  for (const Mode mode : {Mode::kServer, Mode::kClient}) {
    TunnelFlags f;
    f.max_handshakes = "64";
    f.max_handshakes_per_source = "4";
    f.listen = ":1";
    f.target = ":2";
    f.use_workload_api = f.allow_any = true;
    f.workload_api = "unix:///run/spire/agent.sock";
    auto draft = read_tunnel_flags(f, mode);
    REQUIRE(draft.ok());
    const auto c = finalize(*draft, {});
    REQUIRE(c.ok());
    CHECK(c->tunnels[0].max_handshakes == 64u);
    CHECK(c->tunnels[0].max_handshakes_per_source == 4u);
  }
  TunnelFlags bad;
  bad.max_handshakes_per_source = "-1";
  bad.listen = ":1";
  bad.target = ":2";
  auto refused = read_tunnel_flags(bad, Mode::kServer);
  REQUIRE_FALSE(refused.ok());
  CHECK_THAT(refused.error().message, Contains("--max-handshakes-per-source"));
}
