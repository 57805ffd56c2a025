#include "spiffe_tunnel/policy/authorizer.h"

#include <string>
#include <vector>

#include <catch2/catch.hpp>

#include "spiffe/test_pki.h"

using spiffe_tunnel::policy::AllowListAuthorizer;
using spiffe_tunnel::spiffe::IdPattern;
using spiffe_tunnel::spiffe::testing::id_of;
using spiffe_tunnel::spiffe::testing::td_of;
using Catch::Matchers::Contains;

namespace {

// Patterns here are valid; their parsing is tested in tests/spiffe/id_pattern_test.cc.
IdPattern pattern_of(std::string_view text) { return IdPattern::parse(text).value(); }

}  // namespace

TEST_CASE("the allow-list authorizer allows a listed ID and names the rule") {
  AllowListAuthorizer a({id_of("spiffe://td/web"), id_of("spiffe://td/api")}, {}, {});
  auto d = a.authorize(id_of("spiffe://td/api"));
  CHECK(d.allowed);
  CHECK_THAT(d.reason, Contains("spiffe://td/api is listed"));
  CHECK_FALSE(a.authorize(id_of("spiffe://td/api/v2")).allowed);
  CHECK_FALSE(a.authorize(id_of("spiffe://other/api")).allowed);
}

TEST_CASE("the allow-list authorizer allows every ID of a listed trust domain") {
  AllowListAuthorizer a({}, {td_of("partner.example")}, {});
  auto d = a.authorize(id_of("spiffe://partner.example/anything/at/all"));
  CHECK(d.allowed);
  CHECK_THAT(d.reason, Contains("trust domain partner.example is listed"));
  CHECK_FALSE(a.authorize(id_of("spiffe://example/anything")).allowed);
  CHECK_FALSE(a.authorize(id_of("spiffe://sub.partner.example/x")).allowed);
}

TEST_CASE("the allow-list authorizer allows an ID matching a pattern") {
  AllowListAuthorizer a({}, {}, {pattern_of("spiffe://td/ns/*/sa/kafka-*")});
  auto d = a.authorize(id_of("spiffe://td/ns/prod/sa/kafka-3"));
  CHECK(d.allowed);
  CHECK_THAT(d.reason, Contains("matches pattern spiffe://td/ns/*/sa/kafka-*"));
  CHECK_FALSE(a.authorize(id_of("spiffe://td/ns/prod/sa/zookeeper")).allowed);
}

TEST_CASE("an empty allow list denies everyone") {
  AllowListAuthorizer a({}, {}, {});
  CHECK_FALSE(a.authorize(id_of("spiffe://td/web")).allowed);
  CHECK(a.describe() == "ids=[] trust_domains=[] patterns=[]");
}

TEST_CASE("allow_any_verified allows any verified peer, after the listed rules") {
  AllowListAuthorizer any({}, {}, {}, true);
  auto d = any.authorize(id_of("spiffe://whatever/x"));
  CHECK(d.allowed);
  CHECK(d.reason == "any verified peer is allowed");
  CHECK(any.describe() == "any peer verified by a held bundle");

  AllowListAuthorizer listed_and_any({id_of("spiffe://td/web")}, {}, {}, true);
  CHECK_THAT(listed_and_any.authorize(id_of("spiffe://td/web")).reason, Contains("is listed"));
  CHECK(listed_and_any.authorize(id_of("spiffe://td/db")).allowed);
  CHECK_THAT(listed_and_any.describe(), Contains("ids=[spiffe://td/web]"));
}

TEST_CASE("describe() lists every rule on one line") {
  AllowListAuthorizer a({id_of("spiffe://a/x"), id_of("spiffe://a/y")}, {td_of("b"), td_of("c")},
                        {pattern_of("spiffe://d/**")});
  CHECK(a.describe() ==
        "ids=[spiffe://a/x,spiffe://a/y] trust_domains=[b,c] patterns=[spiffe://d/**]");
}

TEST_CASE("a denial names the peer and the rules it failed") {
  AllowListAuthorizer a({id_of("spiffe://td/web")}, {td_of("partner")},
                        {pattern_of("spiffe://td/ns/*")});
  auto d = a.authorize(id_of("spiffe://td/db"));
  CHECK_FALSE(d.allowed);
  CHECK_THAT(d.reason, Contains("spiffe://td/db matches no rule"));
  CHECK_THAT(d.reason, Contains(a.describe()));
}
