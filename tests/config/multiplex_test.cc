#include <string>

#include <catch2/catch.hpp>

#include "config/config_test_support.h"
#include "spiffe_tunnel/config/config.h"

using namespace spiffe_tunnel::config;
using namespace spiffe_tunnel::config::testing;
using Catch::Matchers::Contains;

namespace {

std::string server(const std::string& extra) {
  return std::string(kWorkloadApiIdentity) +
         "tunnels:\n  - {name: in, mode: server, listen: \":1000\", target: \"10.0.0.5:8080\", "
         "allow: {trust_domains: [td]}" + extra + "}\n";
}

std::string client(const std::string& extra) {
  return std::string(kWorkloadApiIdentity) +
         "tunnels:\n  - {name: out, mode: client, listen: \":1000\", target: \"peer:15008\", "
         "expect: {trust_domains: [td]}" + extra + "}\n";
}

}  // namespace

TEST_CASE("multiplex is off unless asked for, and {} takes the HBONE defaults") {
  CHECK_FALSE(load_ok(server("")).tunnels[0].multiplex);
  const Config c = load_ok(server(", multiplex: {}"));
  REQUIRE(c.tunnels[0].multiplex);
  const MultiplexConfig& m = *c.tunnels[0].multiplex;
  CHECK(m.connections == 1);
  CHECK(m.max_streams == 100);
  CHECK(m.stream_window == 4 * 1024 * 1024);
  CHECK(m.connection_window == 16 * 1024 * 1024);
  CHECK(m.authority.empty());
}

TEST_CASE("a multiplexing client names the authority its streams ask for") {
  const Config c = load_ok(client(
      ", multiplex: {authority: \"10.0.0.5:8080\", connections: 2, max_streams: 50, "
      "stream_window: 1048576, connection_window: 8388608}"));
  const MultiplexConfig& m = *c.tunnels[0].multiplex;
  CHECK(m.authority == "10.0.0.5:8080");
  CHECK(m.connections == 2);
  CHECK(m.max_streams == 50);
  CHECK(m.stream_window == 1048576);
  CHECK(m.connection_window == 8388608);
  CHECK_THAT(error_of(client(", multiplex: {}")),
             Contains("multiplex needs an authority on a client tunnel"));
  CHECK_THAT(error_of(server(", multiplex: {authority: \"x:1\"}")),
             Contains("multiplex authority is for client tunnels"));
}

TEST_CASE("multiplex values are range-checked where they are written") {
  CHECK_THAT(error_of(server(", multiplex: {max_streams: 0}")),
             Contains("max_streams must be a number from 1 to 1000"));
  CHECK_THAT(error_of(server(", multiplex: {connections: lots}")),
             Contains("connections must be a number from 1 to 1000"));
  CHECK_THAT(error_of(server(", multiplex: {stream_window: 1024}")),
             Contains("stream_window must be a number of bytes from 65536"));
  CHECK_THAT(error_of(server(", multiplex: {stream_window: 8388608, connection_window: 65536}")),
             Contains("connection_window must be at least stream_window"));
  CHECK_THAT(error_of(server(", multiplex: {streams: 5}")), Contains("streams"));
  CHECK_THAT(error_of(server(", multiplex: {}, proxy_protocol: v2")),
             Contains("proxy_protocol does not combine with multiplex"));
}
