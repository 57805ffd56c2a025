#include "spiffe_tunnel/spiffe/spiffe_id.h"

#include <string>
#include <vector>

#include <catch2/catch.hpp>

using spiffe_tunnel::spiffe::SpiffeId;
using spiffe_tunnel::spiffe::TrustDomain;
using Catch::Matchers::Contains;
using Catch::Matchers::StartsWith;

namespace {

struct Invalid {
  std::string text;
  std::string reason;  // expected substring of the error
};

}  // namespace

TEST_CASE("parses valid SPIFFE IDs into trust domain and path") {
  struct Valid {
    std::string text;
    std::string td;
    std::string path;
  };
  const std::vector<Valid> cases = {
      {"spiffe://example.org", "example.org", ""},
      {"spiffe://example.org/workload", "example.org", "/workload"},
      {"spiffe://example.org/ns/prod/sa/Web-API_v1.2", "example.org", "/ns/prod/sa/Web-API_v1.2"},
      {"spiffe://a", "a", ""},
      {"spiffe://-", "-", ""},
      {"spiffe://_x_", "_x_", ""},
      {"spiffe://example..org/x", "example..org", "/x"},
      {"spiffe://192.168.1.1/x", "192.168.1.1", "/x"},
      {"spiffe://td/.path", "td", "/.path"},
      {"spiffe://td/..path", "td", "/..path"},
      {"spiffe://td/...", "td", "/..."},
      {"spiffe://td/a.b/c-d/e_f/GHI/123", "td", "/a.b/c-d/e_f/GHI/123"},
  };
  for (const auto& c : cases) {
    INFO(c.text);
    auto id = SpiffeId::parse(c.text);
    REQUIRE(id.ok());
    CHECK(id->trust_domain().name() == c.td);
    CHECK(id->path() == c.path);
    CHECK(id->str() == c.text);
    CHECK(id->is_root() == c.path.empty());
  }
}

TEST_CASE("rejects malformed SPIFFE IDs with the reason") {
  const std::vector<Invalid> cases = {
      {"", "it is empty"},
      {"example.org/x", "does not start with \"spiffe://\""},
      {"Spiffe://example.org/x", "scheme must be lowercase"},
      {"SPIFFE://example.org/x", "scheme must be lowercase"},
      {"https://example.org/x", "the scheme is \"https\""},
      {"spiffe:/example.org/x", "missing \"//\""},
      {"spiffe:example.org", "missing \"//\""},
      {"spiffe://", "trust domain is missing"},
      {"spiffe:///", "trust domain is missing"},
      {"spiffe:///path", "trust domain is missing"},
      {"spiffe://Example.org/x", "trust domain contains 'E' (allowed: a-z 0-9 . - _)"},
      {"spiffe://user@example.org/x", "trust domain contains '@'"},
      {"spiffe://user@example.org/x", "userinfo is not allowed"},
      {"spiffe://example.org:8443/x", "a port is not allowed"},
      {"spiffe://example.org:/x", "trust domain contains ':'"},
      {"spiffe://[::1]/x", "trust domain contains '['"},
      {"spiffe://exa%41mple.org/x", "trust domain contains '%'"},
      {"spiffe://example.org?q=1", "trust domain contains '?'"},
      {"spiffe://example.org#frag", "trust domain contains '#'"},
      {"spiffe://exa mple.org", "trust domain contains ' '"},
      {"spiffe://example.org/", "path has a trailing slash"},
      {"spiffe://example.org/a/", "path has a trailing slash"},
      {"spiffe://example.org//a", "path has an empty segment"},
      {"spiffe://example.org/a//b", "path has an empty segment"},
      {"spiffe://example.org/.", "path has a \".\" segment"},
      {"spiffe://example.org/..", "path has a \"..\" segment"},
      {"spiffe://example.org/a/./b", "path has a \".\" segment"},
      {"spiffe://example.org/a/../b", "path has a \"..\" segment"},
      {"spiffe://example.org/a%20b", "percent-encoding is not allowed"},
      {"spiffe://example.org/x?q=1", "query and fragment are not allowed"},
      {"spiffe://example.org/x#frag", "path contains '#'"},
      {"spiffe://example.org/a b", "path contains ' '"},
      {"spiffe://example.org/a:b", "path contains ':'"},
      {"spiffe://example.org/a@b", "path contains '@'"},
      {"spiffe://example.org/~user", "path contains '~'"},
      {"spiffe://example.org/a\\b", "path contains '\\'"},
      {"spiffe://example.org/caf\xc3\xa9", "path contains byte 0xc3"},
      {"spiffe://example.org/a\nb", "path contains byte 0x0a"},
  };
  for (const auto& c : cases) {
    INFO(c.text);
    auto id = SpiffeId::parse(c.text);
    REQUIRE_FALSE(id.ok());
    CHECK_THAT(id.error().message, Contains(c.reason));
    CHECK_THAT(id.error().message, Contains("is not a SPIFFE ID"));
  }
}

TEST_CASE("quotes the input in the error message") {
  auto id = SpiffeId::parse("spiffe://Example.org/x");
  REQUIRE_FALSE(id.ok());
  CHECK(id.error().message ==
        "\"spiffe://Example.org/x\" is not a SPIFFE ID: trust domain contains 'E' "
        "(allowed: a-z 0-9 . - _)");
}

TEST_CASE("escapes control bytes of the input in error messages") {
  auto id = SpiffeId::parse("spiffe://td/a\nb");
  REQUIRE_FALSE(id.ok());
  CHECK_THAT(id.error().message, StartsWith("\"spiffe://td/a\\x0ab\""));
}

TEST_CASE("accepts a trust domain of 255 bytes and rejects one of 256") {
  const std::string ok_td(255, 'a');
  CHECK(SpiffeId::parse("spiffe://" + ok_td + "/x").ok());
  CHECK(TrustDomain::parse(ok_td).ok());

  const std::string long_td(256, 'a');
  auto id = SpiffeId::parse("spiffe://" + long_td + "/x");
  REQUIRE_FALSE(id.ok());
  CHECK_THAT(id.error().message, Contains("trust domain is 256 bytes long (at most 255 allowed)"));
  auto td = TrustDomain::parse(long_td);
  REQUIRE_FALSE(td.ok());
  CHECK_THAT(td.error().message, Contains("256 bytes long"));
}

TEST_CASE("accepts a SPIFFE ID of 2048 bytes and rejects one of 2049") {
  const std::string prefix = "spiffe://example.org/";
  const std::string at_limit = prefix + std::string(2048 - prefix.size(), 'p');
  REQUIRE(at_limit.size() == 2048);
  CHECK(SpiffeId::parse(at_limit).ok());

  auto id = SpiffeId::parse(at_limit + "p");
  REQUIRE_FALSE(id.ok());
  CHECK_THAT(id.error().message, Contains("it is 2049 bytes long (at most 2048 allowed)"));
  // The quoted input is shortened so the log line stays readable.
  CHECK(id.error().message.size() < 300);
}

TEST_CASE("compares SPIFFE IDs by trust domain and path") {
  const auto a = *SpiffeId::parse("spiffe://td/a");
  CHECK(a == *SpiffeId::parse("spiffe://td/a"));
  CHECK(a != *SpiffeId::parse("spiffe://td/A"));
  CHECK(a != *SpiffeId::parse("spiffe://td2/a"));
  CHECK(a < *SpiffeId::parse("spiffe://td/b"));
}

TEST_CASE("trust domain parse accepts a bare name or a SPIFFE ID") {
  auto bare = TrustDomain::parse("example.org");
  REQUIRE(bare.ok());
  CHECK(bare->name() == "example.org");
  CHECK(bare->id_string() == "spiffe://example.org");

  auto root = TrustDomain::parse("spiffe://example.org");
  REQUIRE(root.ok());
  CHECK(*root == *bare);

  auto with_path = TrustDomain::parse("spiffe://example.org/ns/x");
  REQUIRE(with_path.ok());
  CHECK(*with_path == *bare);
}

TEST_CASE("trust domain parse rejects invalid names and IDs") {
  const std::vector<Invalid> cases = {
      {"", "it is empty"},
      {"Example.org", "it contains 'E' (allowed: a-z 0-9 . - _)"},
      {"example.org:443", "it contains ':'"},
      {"example.org/x", "it contains '/'"},
      {"user@example.org", "it contains '@'"},
      {"Spiffe://example.org", "scheme must be lowercase"},
      {"spiffe://example.org/", "trailing slash"},
      {"spiffe:///x", "trust domain is missing"},
  };
  for (const auto& c : cases) {
    INFO(c.text);
    auto td = TrustDomain::parse(c.text);
    REQUIRE_FALSE(td.ok());
    CHECK_THAT(td.error().message, Contains(c.reason));
  }
}
