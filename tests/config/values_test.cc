#include "spiffe_tunnel/config/values.h"

#include <chrono>
#include <string>
#include <vector>

#include <catch2/catch.hpp>

using namespace std::chrono_literals;
using namespace spiffe_tunnel::config;
using Catch::Matchers::Contains;
using Catch::Matchers::StartsWith;

TEST_CASE("parse_host_port accepts host:port, [v6]:port and :port") {
  struct Valid {
    std::string text;
    std::string host;
    uint16_t port;
  };
  const std::vector<Valid> cases = {
      {"127.0.0.1:8443", "127.0.0.1", 8443},
      {"0.0.0.0:0", "0.0.0.0", 0},
      {"db.example.org:5432", "db.example.org", 5432},
      {":15432", "127.0.0.1", 15432},
      {"[::1]:443", "::1", 443},
      {"[::]:65535", "::", 65535},
      {"[fe80::1%eth0]:22", "fe80::1%eth0", 22},
      {"[]:80", "127.0.0.1", 80},
      {"host:00080", "host", 80},
  };
  for (const auto& c : cases) {
    INFO(c.text);
    auto hp = parse_host_port(c.text);
    REQUIRE(hp.ok());
    CHECK(hp->host == c.host);
    CHECK(hp->port == c.port);
  }
  CHECK(parse_host_port("[::1]:443")->str() == "[::1]:443");
  CHECK(parse_host_port(":80")->str() == "127.0.0.1:80");
}

TEST_CASE("parse_host_port refuses what is not host:port") {
  struct Invalid {
    std::string text;
    std::string reason;
  };
  const std::vector<Invalid> cases = {
      {"", "has no port"},
      {"localhost", "has no port"},
      {"host:", "port \"\" is not a number"},
      {"host:http", "port \"http\" is not a number"},
      {"host:-1", "port \"-1\" is not a number"},
      {"host:+1", "port \"+1\" is not a number"},
      {"host: 80", "port \" 80\" is not a number"},
      {"host:65536", "port 65536 is out of range"},
      {"host:99999", "port 99999 is out of range"},
      {"host:123456", "port \"123456\" is not a number"},
      {"::1:443", "write IPv6 addresses as [addr]:port"},
      {"[::1]", "is not [IPv6]:port"},
      {"[::1]443", "is not [IPv6]:port"},
      {"[::1:443", "is not [IPv6]:port"},
      {"[::1]:", "port \"\" is not a number"},
  };
  for (const auto& c : cases) {
    INFO("\"" << c.text << "\"");
    auto hp = parse_host_port(c.text);
    REQUIRE_FALSE(hp.ok());
    CHECK_THAT(hp.error().message, Contains(c.reason));
  }
}

TEST_CASE("parse_duration reads ms, s, m, h and bare seconds") {
  struct Valid {
    std::string text;
    std::chrono::milliseconds value;
  };
  const std::vector<Valid> cases = {
      {"250ms", 250ms}, {"0ms", 0ms},   {"10s", 10s},       {"10", 10s},
      {"0", 0ms},       {"5m", 5min},   {"1h", 1h},         {"36h", 36h},
      {"8784h", 8784h}, {"007s", 7s},   {"1000ms", 1s},
  };
  for (const auto& c : cases) {
    INFO(c.text);
    auto d = parse_duration(c.text);
    REQUIRE(d.ok());
    CHECK(d->count() == c.value.count());
  }
}

TEST_CASE("parse_duration refuses other units, signs, fractions and absurd lengths") {
  struct Invalid {
    std::string text;
    std::string reason;
  };
  const std::vector<Invalid> cases = {
      {"", "is not a duration"},
      {"s", "is not a duration"},
      {"-1s", "is not a duration"},
      {"+1s", "is not a duration"},
      {" 1s", "is not a duration"},
      {"1.5s", "has unknown unit \".5s\""},
      {"1 s", "has unknown unit \" s\""},
      {"5d", "has unknown unit \"d\""},
      {"5us", "has unknown unit \"us\""},
      {"5S", "has unknown unit \"S\""},
      {"1h30m", "has unknown unit \"h30m\""},
      {"1234567890123", "is not a duration"},
      {"8785h", "is longer than 8784h"},
      {"999999999999h", "is longer than 8784h"},
      {"999999999999m", "is longer than 8784h"},
  };
  for (const auto& c : cases) {
    INFO("\"" << c.text << "\"");
    auto d = parse_duration(c.text);
    REQUIRE_FALSE(d.ok());
    CHECK_THAT(d.error().message, Contains(c.reason));
  }
}

TEST_CASE("parse_busy_poll reads us and ms up to 10ms, and 0 or off") {
  struct Case {
    std::string text;
    bool ok;
    std::chrono::microseconds value;
    std::string reason;
  };
  const std::vector<Case> cases = {
      {"0", true, 0us, ""},
      {"off", true, 0us, ""},
      {"0us", true, 0us, ""},
      {"50us", true, 50us, ""},
      {"200us", true, 200us, ""},
      {"1ms", true, 1000us, ""},
      {"10ms", true, 10000us, ""},
      {"10000us", true, 10000us, ""},
      {"10001us", false, 0us, "is longer than 10ms"},
      {"11ms", false, 0us, "is longer than 10ms"},
      {"999999999ms", false, 0us, "is longer than 10ms"},
      {"", false, 0us, "is not a busy-poll window"},
      {"us", false, 0us, "is not a busy-poll window"},
      {"200", false, 0us, "is not a busy-poll window"},
      {"1s", false, 0us, "is not a busy-poll window"},
      {"-5us", false, 0us, "is not a busy-poll window"},
      {"1.5ms", false, 0us, "is not a busy-poll window"},
      {"on", false, 0us, "is not a busy-poll window"},
      {"1234567890us", false, 0us, "is not a busy-poll window"},
  };
  for (const auto& c : cases) {
    INFO("\"" << c.text << "\"");
    auto d = parse_busy_poll(c.text);
    REQUIRE(d.ok() == c.ok);
    if (c.ok) {
      CHECK(d->count() == c.value.count());
    } else {
      CHECK_THAT(d.error().message, Contains(c.reason));
    }
  }
}

TEST_CASE("format_duration writes what parse_duration reads back") {
  for (std::chrono::milliseconds d : std::vector<std::chrono::milliseconds>{
           0ms, 250ms, 1500ms, 2s, 10s, 90s, 5min, 1h, 36h}) {
    const std::string text = format_duration(d);
    INFO(text);
    auto back = parse_duration(text);
    REQUIRE(back.ok());
    CHECK(*back == d);
  }
  CHECK(format_duration(10s) == "10s");
  CHECK(format_duration(0ms) == "0");
  CHECK(format_duration(250ms) == "250ms");
}

TEST_CASE("counts are numbers within their range") {
  CHECK(*parse_threads("0") == 0);
  CHECK(*parse_threads("1024") == 1024);
  CHECK_THAT(parse_threads("1025").error().message, Contains("threads must be at most 1024"));
  CHECK_THAT(parse_threads("18446744073709551615").error().message, Contains("at most 1024"));
  for (const char* bad : {"", "-1", "many", "1e3", " 4", "99999999999999999999999"}) {
    INFO(bad);
    CHECK_THAT(parse_threads(bad).error().message, Contains("threads must be a number"));
  }
  CHECK(*parse_max_connections("1") == 1);
  for (const char* bad : {"0", "-5"}) {
    INFO(bad);
    CHECK_THAT(parse_max_connections(bad).error().message, Contains("must be positive"));
  }
  for (const char* bad : {"lots", "1.5", "", "99999999999999999999999"}) {
    INFO(bad);
    CHECK_THAT(parse_max_connections(bad).error().message, Contains("must be a number"));
  }
  CHECK(*parse_buffer_size("32768") == 32768);
  CHECK(*parse_buffer_size("16777216") == 16777216);
  for (const char* bad : {"32767", "16777217", "-65536", "0"}) {
    INFO(bad);
    CHECK_THAT(parse_buffer_size(bad).error().message,
               Contains("buffer_size must be between 32768 and 16777216"));
  }
  CHECK_THAT(parse_buffer_size("64k").error().message, Contains("must be a number of bytes"));
}

TEST_CASE("enumerated values read their names and nothing else") {
  CHECK(*parse_ktls("auto") == KtlsMode::kAuto);
  CHECK(*parse_ktls("on") == KtlsMode::kOn);
  CHECK(*parse_ktls("off") == KtlsMode::kOff);
  CHECK_THAT(parse_ktls("yes").error().message, Contains("ktls \"yes\" is not auto, on or off"));
  CHECK(*parse_tls_version("1.2") == TlsVersion::k1_2);
  CHECK(*parse_tls_version("1.3") == TlsVersion::k1_3);
  for (const char* bad : {"1.1", "TLSv1.3", "", "1.3 "}) {
    INFO(bad);
    CHECK_THAT(parse_tls_version(bad).error().message, Contains("is not 1.2 or 1.3"));
  }
  CHECK(*parse_proxy_protocol("off") == ProxyProtocol::kOff);
  CHECK(*parse_proxy_protocol("v2") == ProxyProtocol::kV2);
  for (const char* bad : {"v1", "V2", "on", ""}) {
    INFO(bad);
    CHECK_THAT(parse_proxy_protocol(bad).error().message, Contains("is not off or v2"));
  }
  for (auto l : {LogLevel::kTrace, LogLevel::kDebug, LogLevel::kInfo, LogLevel::kWarn,
                 LogLevel::kError, LogLevel::kCritical, LogLevel::kOff}) {
    CHECK(*parse_log_level(log_level_name(l)) == l);
  }
  CHECK(*parse_log_level("warning") == LogLevel::kWarn);
  CHECK(*parse_log_level("err") == LogLevel::kError);
  CHECK_THAT(parse_log_level("loud").error().message, Contains("\"loud\" is not a log level"));
}

TEST_CASE("parse_opa_url splits host, port and data API path") {
  auto e = parse_opa_url("http://127.0.0.1:8181/v1/data/tunnels/authz/allow");
  REQUIRE(e.ok());
  CHECK(e->host == "127.0.0.1");
  CHECK(e->port == 8181);
  CHECK(e->path == "/v1/data/tunnels/authz/allow");
  auto v6 = parse_opa_url("http://[::1]:8181/v1/data/x");
  REQUIRE(v6.ok());
  CHECK(v6->host == "::1");

  struct Invalid {
    std::string url;
    std::string reason;
  };
  const std::vector<Invalid> cases = {
      {"https://opa:8181/v1/data/x", "must start with http://"},
      {"opa:8181/v1/data/x", "must start with http://"},
      {"http://opa/v1/data/x", "needs host:port"},
      {"http://opa:/v1/data/x", "needs host:port"},
      {"http:///v1/data/x", "needs host:port"},
      {"http://opa:http/v1/data/x", "port \"http\" is not a number"},
      {"http://opa:99999/v1/data/x", "port 99999 is out of range"},
      {"http://opa:8181/v1/policies", "the path must be a data API path"},
      {"http://opa:8181", "the path must be a data API path"},
      {"http://[::1:8181/v1/data/x", "write IPv6 addresses as [addr]:port"},
      {"http://::1:8181/v1/data/x", "write IPv6 addresses as [addr]:port"},
  };
  for (const auto& c : cases) {
    INFO(c.url);
    auto bad = parse_opa_url(c.url);
    REQUIRE_FALSE(bad.ok());
    CHECK_THAT(bad.error().message, Contains(c.reason));
    CHECK_THAT(bad.error().message, Contains("OPA URL \"" + c.url + "\""));
  }
}

TEST_CASE("peer rules parse every kind of entry and name the bad one") {
  auto rules = parse_peer_rules({.ids = {{"spiffe://td/a", "here"}},
                                 .trust_domains = {{"partner", "there"}},
                                 .patterns = {{"spiffe://td/ns/*", "elsewhere"}},
                                 .any = true});
  REQUIRE(rules.ok());
  CHECK(rules->ids.at(0).str() == "spiffe://td/a");
  CHECK(rules->trust_domains.at(0).name() == "partner");
  CHECK(rules->patterns.at(0).text() == "spiffe://td/ns/*");
  CHECK(rules->any);
  CHECK_FALSE(rules->empty());
  CHECK(PeerRules{}.empty());

  auto bad_id = parse_peer_rules({.ids = {{"spiffe://td/a", "first"}, {"spiffe:/x", "second"}}});
  REQUIRE_FALSE(bad_id.ok());
  CHECK_THAT(bad_id.error().message, StartsWith("second: \"spiffe:/x\" is not a SPIFFE ID"));
  auto bad_td = parse_peer_rules({.trust_domains = {{"Bad TD", "flag --allow-trust-domain"}}});
  REQUIRE_FALSE(bad_td.ok());
  CHECK_THAT(bad_td.error().message, StartsWith("flag --allow-trust-domain: \"Bad TD\""));
  auto bad_pattern = parse_peer_rules({.patterns = {{"spiffe://*/x", "p"}}});
  REQUIRE_FALSE(bad_pattern.ok());
  CHECK_THAT(bad_pattern.error().message, Contains("wildcards are not allowed"));
}
