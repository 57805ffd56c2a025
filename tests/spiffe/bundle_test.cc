#include "spiffe_tunnel/spiffe/bundle.h"

#include <string>

#include <openssl/evp.h>
#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>

#include "spiffe/test_pki.h"

using namespace spiffe_tunnel::spiffe;
using namespace spiffe_tunnel::spiffe::testing;
using Catch::Matchers::Contains;
using nlohmann::json;

namespace {

std::string base64_of(const std::string& bytes) {
  std::string out(4 * ((bytes.size() + 2) / 3) + 1, '\0');
  const int n = EVP_EncodeBlock(reinterpret_cast<unsigned char*>(out.data()),
                                reinterpret_cast<const unsigned char*>(bytes.data()),
                                static_cast<int>(bytes.size()));
  out.resize(static_cast<size_t>(n));
  return out;
}

json x509_jwk(const Issuer& ca) {
  return {{"kty", "EC"}, {"crv", "P-256"}, {"use", "x509-svid"},
          {"x5c", {base64_of(der_of(ca.certificate()))}}};
}

bool holds(const Bundle& bundle, const Issuer& ca) {
  for (const auto& cert : bundle.authorities()) {
    if (X509_cmp(cert.get(), ca.certificate()) == 0) {
      return true;
    }
  }
  return false;
}

}  // namespace

TEST_CASE("reads a bundle from concatenated DER") {
  const Issuer r1 = make_root("a.test");
  const Issuer r2 = make_root("a.test");
  const std::string der = der_of(r1.certificate()) + der_of(r2.certificate());
  auto bundle = Bundle::from_der(td_of("a.test"), der);
  REQUIRE(bundle.ok());
  CHECK(bundle->trust_domain().name() == "a.test");
  REQUIRE(bundle->authorities().size() == 2);
  CHECK(holds(*bundle, r1));
  CHECK(holds(*bundle, r2));
  REQUIRE(bundle->store() != nullptr);
}

TEST_CASE("reads zero DER bytes as an empty bundle") {
  auto bundle = Bundle::from_der(td_of("a.test"), "");
  REQUIRE(bundle.ok());
  CHECK(bundle->authorities().empty());
  CHECK(bundle->store() != nullptr);
}

TEST_CASE("rejects malformed DER naming the trust domain") {
  auto bundle = Bundle::from_der(td_of("a.test"), "\x30\x03\x01");
  REQUIRE_FALSE(bundle.ok());
  CHECK_THAT(bundle.error().message, Contains("bundle of trust domain \"a.test\""));
  CHECK_THAT(bundle.error().message, Contains("malformed"));
}

TEST_CASE("reads a bundle from PEM") {
  const Issuer r1 = make_root("a.test");
  const Issuer r2 = make_root("a.test");
  const std::string pem =
      certificate_to_pem(r1.certificate()) + "\n" + certificate_to_pem(r2.certificate());
  auto bundle = Bundle::from_pem(td_of("a.test"), pem);
  REQUIRE(bundle.ok());
  CHECK(bundle->authorities().size() == 2);
}

TEST_CASE("rejects PEM text without a CERTIFICATE block") {
  auto empty = Bundle::from_pem(td_of("a.test"), "");
  REQUIRE_FALSE(empty.ok());
  CHECK_THAT(empty.error().message, Contains("no CERTIFICATE block"));
  auto text = Bundle::from_pem(td_of("a.test"), "just some text\n");
  REQUIRE_FALSE(text.ok());
}

TEST_CASE("reads x509-svid keys of a JWKS and ignores jwt-svid keys") {
  const Issuer r1 = make_root("a.test");
  const Issuer r2 = make_root("a.test");
  const json doc = {
      {"spiffe_sequence", 12},
      {"spiffe_refresh_hint", 300},
      {"keys",
       {x509_jwk(r1),
        {{"kty", "EC"}, {"crv", "P-256"}, {"x", "AAAA"}, {"y", "AAAA"}, {"use", "jwt-svid"},
         {"kid", "k1"}},
        x509_jwk(r2)}}};
  auto bundle = Bundle::from_jwks(td_of("a.test"), doc.dump());
  INFO((bundle.ok() ? "" : bundle.error().message));
  REQUIRE(bundle.ok());
  REQUIRE(bundle->authorities().size() == 2);
  CHECK(holds(*bundle, r1));
  CHECK(holds(*bundle, r2));
}

TEST_CASE("skips JWKs with unknown use or kty and x509-svid keys without x5c") {
  const Issuer r1 = make_root("a.test");
  json unknown_use = x509_jwk(r1);
  unknown_use["use"] = "wit-svid";
  json no_use = x509_jwk(r1);
  no_use.erase("use");
  json unknown_kty = x509_jwk(r1);
  unknown_kty["kty"] = "PQ";
  json no_x5c = x509_jwk(r1);
  no_x5c.erase("x5c");
  json empty_x5c = x509_jwk(r1);
  empty_x5c["x5c"] = json::array();
  const json doc = {{"keys", {unknown_use, no_use, unknown_kty, no_x5c, empty_x5c}},
                    {"unknown_member", true}};
  auto bundle = Bundle::from_jwks(td_of("a.test"), doc.dump());
  INFO((bundle.ok() ? "" : bundle.error().message));
  REQUIRE(bundle.ok());
  CHECK(bundle->authorities().empty());
}

TEST_CASE("uses only the first x5c element of a JWK") {
  const Issuer r1 = make_root("a.test");
  const Issuer r2 = make_root("a.test");
  json jwk = x509_jwk(r1);
  jwk["x5c"].push_back(base64_of(der_of(r2.certificate())));
  auto bundle = Bundle::from_jwks(td_of("a.test"), json{{"keys", {jwk}}}.dump());
  REQUIRE(bundle.ok());
  REQUIRE(bundle->authorities().size() == 1);
  CHECK(holds(*bundle, r1));
}

TEST_CASE("reads a JWKS with empty keys as an empty bundle") {
  auto bundle = Bundle::from_jwks(td_of("a.test"), R"({"keys": []})");
  REQUIRE(bundle.ok());
  CHECK(bundle->authorities().empty());
}

TEST_CASE("rejects a JWKS without keys") {
  auto bundle = Bundle::from_jwks(td_of("a.test"), R"({"spiffe_sequence": 1})");
  REQUIRE_FALSE(bundle.ok());
  CHECK_THAT(bundle.error().message, Contains("no \"keys\" member"));
  CHECK_THAT(bundle.error().message, Contains("\"a.test\""));

  auto not_array = Bundle::from_jwks(td_of("a.test"), R"({"keys": {}})");
  REQUIRE_FALSE(not_array.ok());
  CHECK_THAT(not_array.error().message, Contains("\"keys\" is not an array"));
}

// Found by tests/fuzz/bundle_fuzz.cc (reproducer in tests/fuzz/corpus/bundle/): nlohmann throws
// out_of_range, not parse_error, for a number beyond double's range, and the exception used to
// escape from_jwks -- a bundle file could end the daemon.
TEST_CASE("rejects a JWKS with a number beyond double's range instead of throwing") {
  for (const char* doc : {"1.8e888", R"({"keys": [], "spiffe_sequence": 1e999})",
                          R"({"keys": [{"use": "x509-svid", "x5c": [-2e400]}]})"}) {
    INFO(doc);
    spiffe_tunnel::base::Result<Bundle> bundle = spiffe_tunnel::base::Error{"not run"};
    REQUIRE_NOTHROW(bundle = Bundle::from_jwks(td_of("a.test"), doc));
    REQUIRE_FALSE(bundle.ok());
    CHECK_THAT(bundle.error().message, Contains("is not valid JSON"));
    REQUIRE_NOTHROW(bundle = Bundle::parse(td_of("a.test"), std::string(" ") + doc));
    REQUIRE_FALSE(bundle.ok());
  }
}

TEST_CASE("rejects invalid JSON with the parser's message") {
  auto bundle = Bundle::from_jwks(td_of("a.test"), R"({"keys": [)");
  REQUIRE_FALSE(bundle.ok());
  CHECK_THAT(bundle.error().message, Contains("is not valid JSON"));
  CHECK_THAT(bundle.error().message, Contains("parse error"));

  auto array = Bundle::from_jwks(td_of("a.test"), "[]");
  REQUIRE_FALSE(array.ok());
  CHECK_THAT(array.error().message, Contains("not a JSON object"));
}

TEST_CASE("rejects an x509-svid JWK whose x5c is not a base64 certificate") {
  const Issuer r1 = make_root("a.test");
  json bad_b64 = x509_jwk(r1);
  bad_b64["x5c"] = {"not base64!"};
  auto b1 = Bundle::from_jwks(td_of("a.test"), json{{"keys", {bad_b64}}}.dump());
  REQUIRE_FALSE(b1.ok());
  CHECK_THAT(b1.error().message, Contains("keys[0].x5c[0] is not valid base64"));

  json not_cert = x509_jwk(r1);
  not_cert["x5c"] = {base64_of("hello world")};
  auto b2 = Bundle::from_jwks(td_of("a.test"), json{{"keys", {not_cert}}}.dump());
  REQUIRE_FALSE(b2.ok());
  CHECK_THAT(b2.error().message, Contains("keys[0].x5c[0]"));

  json truncated = x509_jwk(r1);
  const std::string der = der_of(r1.certificate());
  truncated["x5c"] = {base64_of(der.substr(0, der.size() - 1))};
  auto b3 = Bundle::from_jwks(td_of("a.test"), json{{"keys", {truncated}}}.dump());
  REQUIRE_FALSE(b3.ok());
}

TEST_CASE("decodes x5c with every base64 padding length") {
  // DER lengths vary with the signature; over many roots each padding case (0, 1, 2) occurs.
  bool seen[3] = {false, false, false};
  for (int i = 0; i < 60 && !(seen[0] && seen[1] && seen[2]); ++i) {
    const Issuer root = make_root("a.test");
    const size_t pad = (3 - der_of(root.certificate()).size() % 3) % 3;
    seen[pad] = true;
    auto bundle = Bundle::from_jwks(td_of("a.test"), json{{"keys", {x509_jwk(root)}}}.dump());
    INFO((bundle.ok() ? "" : bundle.error().message));
    REQUIRE(bundle.ok());
    REQUIRE(bundle->authorities().size() == 1);
    CHECK(holds(*bundle, root));
  }
  CHECK(seen[0]);
  CHECK(seen[1]);
  CHECK(seen[2]);
}

TEST_CASE("detects the bundle format") {
  const Issuer r1 = make_root("a.test");
  const TrustDomain td = td_of("a.test");

  auto jwks = Bundle::parse(td, "\n  " + json{{"keys", {x509_jwk(r1)}}}.dump());
  REQUIRE(jwks.ok());
  CHECK(holds(*jwks, r1));

  auto pem = Bundle::parse(td, "# roots of a.test\n" + certificate_to_pem(r1.certificate()));
  REQUIRE(pem.ok());
  CHECK(holds(*pem, r1));

  auto der = Bundle::parse(td, der_of(r1.certificate()));
  REQUIRE(der.ok());
  CHECK(holds(*der, r1));

  auto empty = Bundle::parse(td, "");
  REQUIRE(empty.ok());
  CHECK(empty->authorities().empty());
}

TEST_CASE("compares bundles by their authorities in order") {
  const Issuer r1 = make_root("a.test");
  const Issuer r2 = make_root("a.test");
  const TrustDomain td = td_of("a.test");
  const std::string d1 = der_of(r1.certificate());
  const std::string d2 = der_of(r2.certificate());
  const Bundle a = Bundle::from_der(td, d1 + d2).value();
  const Bundle same = Bundle::from_der(td, d1 + d2).value();
  const Bundle swapped = Bundle::from_der(td, d2 + d1).value();
  const Bundle fewer = Bundle::from_der(td, d1).value();
  CHECK(a.same_authorities(same));
  CHECK_FALSE(a.same_authorities(swapped));
  CHECK_FALSE(a.same_authorities(fewer));
}

TEST_CASE("bundle set keeps one bundle per trust domain") {
  const Issuer a1 = make_root("a.test");
  const Issuer a2 = make_root("a.test");
  const Issuer b = make_root("b.test");
  BundleSet set;
  CHECK(set.find(td_of("a.test")) == nullptr);
  set.put(bundle_of(a1));
  set.put(bundle_of(b));
  set.put(bundle_of(a2));  // replaces a1
  CHECK(set.size() == 2);
  const Bundle* a = set.find(td_of("a.test"));
  REQUIRE(a != nullptr);
  CHECK(holds(*a, a2));
  CHECK_FALSE(holds(*a, a1));
  const auto tds = set.trust_domains();
  REQUIRE(tds.size() == 2);
  CHECK(tds[0].name() == "a.test");
  CHECK(tds[1].name() == "b.test");
  CHECK(set.find(td_of("c.test")) == nullptr);
}
