#include "spiffe_tunnel/spiffe/id_pattern.h"

#include <string>
#include <vector>

#include <catch2/catch.hpp>

#include "spiffe/test_pki.h"

using spiffe_tunnel::spiffe::IdPattern;
using spiffe_tunnel::spiffe::testing::id_of;
using Catch::Matchers::Contains;

namespace {

IdPattern pattern_of(std::string_view text) {
  auto p = IdPattern::parse(text);
  INFO(text << ": " << (p.ok() ? "" : p.error().message));
  REQUIRE(p.ok());
  return *p;
}

struct MatchCase {
  std::string pattern;
  std::string id;
  bool matches;
};

void check_matches(const std::vector<MatchCase>& cases) {
  for (const auto& c : cases) {
    INFO("pattern " << c.pattern << " vs " << c.id);
    CHECK(pattern_of(c.pattern).matches(id_of(c.id)) == c.matches);
  }
}

}  // namespace

TEST_CASE("a literal pattern matches exactly that ID") {
  check_matches({
      {"spiffe://td/ns/prod/sa/kafka", "spiffe://td/ns/prod/sa/kafka", true},
      {"spiffe://td/ns/prod/sa/kafka", "spiffe://td/ns/prod/sa/kafka2", false},
      {"spiffe://td/ns/prod/sa/kafka", "spiffe://td/ns/prod/sa", false},
      {"spiffe://td/ns/prod/sa/kafka", "spiffe://td/ns/prod/sa/kafka/extra", false},
      {"spiffe://td/ns/prod/sa/kafka", "spiffe://other/ns/prod/sa/kafka", false},
      {"spiffe://td/Kafka", "spiffe://td/kafka", false},  // paths are case-sensitive
  });
  CHECK(pattern_of("spiffe://td/ns/prod").text() == "spiffe://td/ns/prod");
}

TEST_CASE("'*' matches exactly one whole segment") {
  check_matches({
      {"spiffe://td/ns/*/sa/kafka", "spiffe://td/ns/prod/sa/kafka", true},
      {"spiffe://td/ns/*/sa/kafka", "spiffe://td/ns/dev/sa/kafka", true},
      {"spiffe://td/ns/*/sa/kafka", "spiffe://td/ns/sa/kafka", false},
      {"spiffe://td/ns/*/sa/kafka", "spiffe://td/ns/a/b/sa/kafka", false},
      {"spiffe://td/*", "spiffe://td/x", true},
      {"spiffe://td/*", "spiffe://td", false},
      {"spiffe://td/*", "spiffe://td/x/y", false},
  });
}

TEST_CASE("a glob matches within one segment only") {
  check_matches({
      {"spiffe://td/sa/kafka-*", "spiffe://td/sa/kafka-0", true},
      {"spiffe://td/sa/kafka-*", "spiffe://td/sa/kafka-", true},
      {"spiffe://td/sa/kafka-*", "spiffe://td/sa/kafka", false},
      {"spiffe://td/sa/kafka-*", "spiffe://td/sa/kafka-0/x", false},
      {"spiffe://td/sa/*-broker", "spiffe://td/sa/kafka-broker", true},
      {"spiffe://td/sa/*-broker", "spiffe://td/sa/kafka-broker-1", false},
      {"spiffe://td/sa/k*a-*-b*", "spiffe://td/sa/kafka-1-b", true},
      {"spiffe://td/sa/k*a-*-b*", "spiffe://td/sa/kafka-1-c", false},
      {"spiffe://td/sa/a*a", "spiffe://td/sa/aaa", true},
      {"spiffe://td/sa/a*a", "spiffe://td/sa/a", false},
  });
}

TEST_CASE("'**' matches any number of segments, including none") {
  check_matches({
      {"spiffe://td/ns/prod/**", "spiffe://td/ns/prod", true},
      {"spiffe://td/ns/prod/**", "spiffe://td/ns/prod/sa", true},
      {"spiffe://td/ns/prod/**", "spiffe://td/ns/prod/sa/kafka/x", true},
      {"spiffe://td/ns/prod/**", "spiffe://td/ns/production", false},
      {"spiffe://td/ns/prod/**", "spiffe://td/ns", false},
      {"spiffe://td/**", "spiffe://td", true},
      {"spiffe://td/**", "spiffe://td/a/b/c", true},
      {"spiffe://td/**", "spiffe://other/a", false},
      {"spiffe://td/**/kafka", "spiffe://td/kafka", true},
      {"spiffe://td/**/kafka", "spiffe://td/ns/prod/sa/kafka", true},
      {"spiffe://td/**/kafka", "spiffe://td/ns/prod/sa/kafka/x", false},
      {"spiffe://td/a/**/b/**/c", "spiffe://td/a/x/b/y/z/c", true},
      {"spiffe://td/a/**/b/**/c", "spiffe://td/a/b/c", true},
      {"spiffe://td/a/**/b/**/c", "spiffe://td/a/x/c", false},
  });
}

TEST_CASE("matching takes polynomial time however many '**' segments a pattern has") {
  // The peer chooses the ID; a backtracking matcher would take hours on this pair.
  std::string pattern = "spiffe://td";
  for (int i = 0; i < 16; ++i) {
    pattern += "/**";
  }
  pattern += "/z";
  std::string id = "spiffe://td";
  for (int i = 0; i < 500; ++i) {
    id += "/a";
  }
  CHECK_FALSE(pattern_of(pattern).matches(id_of(id)));
  CHECK(pattern_of(pattern).matches(id_of(id + "/z")));
}

TEST_CASE("a pattern of only a trust domain matches only the trust domain ID") {
  check_matches({
      {"spiffe://td", "spiffe://td", true},
      {"spiffe://td", "spiffe://td/x", false},
      {"spiffe://td", "spiffe://other", false},
  });
}

TEST_CASE("pattern syntax errors say what is wrong") {
  struct Bad {
    std::string text;
    std::string reason;
  };
  const std::vector<Bad> cases = {
      {"", "must start with \"spiffe://\""},
      {"td/x", "must start with \"spiffe://\""},
      {"SPIFFE://td/x", "must start with \"spiffe://\""},
      {"spiffe://*/x", "wildcards are not allowed in the trust domain"},
      {"spiffe://*.example.org/x", "wildcards are not allowed in the trust domain"},
      {"spiffe://td*", "wildcards are not allowed in the trust domain"},
      {"spiffe://Example.org/x", "is not a trust domain name"},
      {"spiffe:///x", "is not a trust domain name"},
      {"spiffe://td/", "empty path segment"},
      {"spiffe://td//x", "empty path segment"},
      {"spiffe://td/x/", "empty path segment"},
      {"spiffe://td/kafka**", "\"**\" must be a whole segment"},
      {"spiffe://td/**x", "\"**\" must be a whole segment"},
      {"spiffe://td/a***", "\"**\" must be a whole segment"},
      {"spiffe://td/x?", "character '?'"},
      {"spiffe://td/x y", "character ' '"},
      {"spiffe://td/x%2f", "character '%'"},
      {"spiffe://td/[abc]", "character '['"},
  };
  for (const auto& c : cases) {
    auto p = IdPattern::parse(c.text);
    INFO("pattern \"" << c.text << "\"");
    REQUIRE_FALSE(p.ok());
    CHECK_THAT(p.error().message, Contains(c.reason));
    CHECK_THAT(p.error().message, Contains("\"" + c.text + "\""));
  }
}

TEST_CASE("patterns are equal when written the same") {
  CHECK(pattern_of("spiffe://td/a/*") == pattern_of("spiffe://td/a/*"));
  CHECK_FALSE(pattern_of("spiffe://td/a/*") == pattern_of("spiffe://td/a/**"));
}
