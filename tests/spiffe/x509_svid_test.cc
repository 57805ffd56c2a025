#include "spiffe_tunnel/spiffe/x509_svid.h"

#include <chrono>

#include <openssl/pem.h>
#include <catch2/catch.hpp>

#include "spiffe/test_pki.h"

using namespace spiffe_tunnel::spiffe;
using namespace spiffe_tunnel::spiffe::testing;
using Catch::Matchers::Contains;

namespace {

std::string pem_of(const std::vector<spiffe_tunnel::base::X509Ptr>& chain) {
  std::string out;
  for (const auto& cert : chain) {
    out += certificate_to_pem(cert.get());
  }
  return out;
}

}  // namespace

TEST_CASE("parses an SVID from Workload API DER and keeps chain order") {
  const Issuer root = make_root("a.test");
  const Issuer mid = make_intermediate(root);
  const X509Svid minted = make_svid(mid, "spiffe://a.test/web");

  auto svid = X509Svid::from_der(der_of(minted.chain), pkcs8_der_of(minted.key.get()), "internal");
  INFO((svid.ok() ? "" : svid.error().message));
  REQUIRE(svid.ok());
  CHECK(svid->id.str() == "spiffe://a.test/web");
  CHECK(svid->hint == "internal");
  REQUIRE(svid->chain.size() == 2);
  CHECK(X509_cmp(svid->leaf(), minted.leaf()) == 0);
  CHECK(X509_cmp(svid->chain[1].get(), mid.certificate()) == 0);
  CHECK(EVP_PKEY_eq(svid->key.get(), minted.key.get()) == 1);
}

TEST_CASE("parses an SVID from PEM chain and PKCS#8 or traditional PEM key") {
  const Issuer root = make_root("a.test");
  const X509Svid minted = make_svid(root, "spiffe://a.test/web");
  const std::string chain_pem = pem_of(minted.chain);

  auto pkcs8 = X509Svid::from_pem(chain_pem, private_key_to_pem(minted.key.get()));
  INFO((pkcs8.ok() ? "" : pkcs8.error().message));
  REQUIRE(pkcs8.ok());
  CHECK(pkcs8->id.str() == "spiffe://a.test/web");
  CHECK(pkcs8->hint.empty());

  spiffe_tunnel::base::BioPtr bio(BIO_new(BIO_s_mem()));
  REQUIRE(PEM_write_bio_PrivateKey_traditional(bio.get(), minted.key.get(), nullptr, nullptr, 0,
                                               nullptr, nullptr) == 1);
  char* data = nullptr;
  const long len = BIO_get_mem_data(bio.get(), &data);
  const std::string traditional(data, static_cast<size_t>(len));
  REQUIRE_THAT(traditional, Contains("BEGIN EC PRIVATE KEY"));
  CHECK(X509Svid::from_pem(chain_pem, traditional).ok());
}

TEST_CASE("refuses an encrypted PEM key without prompting") {
  const Issuer root = make_root("a.test");
  const X509Svid minted = make_svid(root, "spiffe://a.test/web");
  spiffe_tunnel::base::BioPtr bio(BIO_new(BIO_s_mem()));
  char pass[] = "secret";
  REQUIRE(PEM_write_bio_PKCS8PrivateKey(bio.get(), minted.key.get(), EVP_aes_128_cbc(), pass,
                                        sizeof(pass) - 1, nullptr, nullptr) == 1);
  char* data = nullptr;
  const long len = BIO_get_mem_data(bio.get(), &data);
  auto svid = X509Svid::from_pem(pem_of(minted.chain), std::string(data, static_cast<size_t>(len)));
  REQUIRE_FALSE(svid.ok());
  CHECK_THAT(svid.error().message, Contains("encrypted keys are not supported"));
}

TEST_CASE("rejects an SVID whose key does not match the leaf") {
  const Issuer root = make_root("a.test");
  const X509Svid minted = make_svid(root, "spiffe://a.test/web");
  auto other = generate_ec_p256_key();
  REQUIRE(other.ok());
  auto svid = X509Svid::from_der(der_of(minted.chain), pkcs8_der_of(other->get()));
  REQUIRE_FALSE(svid.ok());
  CHECK_THAT(svid.error().message, Contains("private key does not match"));
}

TEST_CASE("rejects an SVID with no certificates or a malformed key") {
  const Issuer root = make_root("a.test");
  const X509Svid minted = make_svid(root, "spiffe://a.test/web");
  auto empty = X509Svid::from_der("", pkcs8_der_of(minted.key.get()));
  REQUIRE_FALSE(empty.ok());
  CHECK_THAT(empty.error().message, Contains("no certificates"));

  auto bad_key = X509Svid::from_der(der_of(minted.chain), "not a key");
  REQUIRE_FALSE(bad_key.ok());
  CHECK_THAT(bad_key.error().message, Contains("not PKCS#8 DER"));

  auto trailing = X509Svid::from_der(der_of(minted.chain), pkcs8_der_of(minted.key.get()) + "x");
  REQUIRE_FALSE(trailing.ok());
  CHECK_THAT(trailing.error().message, Contains("trailing bytes"));
}

TEST_CASE("own SVID check rejects a leaf that breaks the leaf rules") {
  const Issuer root = make_root("a.test");
  CertSpec spec;
  spec.is_ca = true;
  const X509Svid minted = make_svid(root, "spiffe://a.test/web", spec);
  CHECK_FALSE(check_own_svid(minted).ok());
  auto svid = X509Svid::from_der(der_of(minted.chain), pkcs8_der_of(minted.key.get()));
  REQUIRE_FALSE(svid.ok());
  CHECK_THAT(svid.error().message, Contains("is a CA certificate"));
}

TEST_CASE("own SVID check rejects a chain element that is not a signing certificate") {
  const Issuer root = make_root("a.test");
  X509Svid minted = make_svid(root, "spiffe://a.test/web");
  const X509Svid other = make_svid(root, "spiffe://a.test/other");
  minted.chain.push_back(spiffe_tunnel::base::share(other.leaf()));
  auto st = check_own_svid(minted);
  REQUIRE_FALSE(st.ok());
  CHECK_THAT(st.error().message, Contains("chain element 1"));
  CHECK_THAT(st.error().message, Contains("basicConstraints cA is not TRUE"));
}

TEST_CASE("own SVID check rejects an ID that differs from the leaf's") {
  const Issuer root = make_root("a.test");
  X509Svid minted = make_svid(root, "spiffe://a.test/web");
  minted.id = id_of("spiffe://a.test/db");
  auto st = check_own_svid(minted);
  REQUIRE_FALSE(st.ok());
  CHECK_THAT(st.error().message, Contains("leaf certificate names spiffe://a.test/web"));
}

TEST_CASE("issued SVIDs pass the own SVID check") {
  const Issuer root = make_root("a.test");
  const Issuer mid = make_intermediate(root);
  CHECK(check_own_svid(make_svid(root, "spiffe://a.test/web")).ok());
  auto st = check_own_svid(make_svid(mid, "spiffe://a.test/web"));
  INFO((st.ok() ? "" : st.error().message));
  CHECK(st.ok());
}

TEST_CASE("reports the leaf's notAfter") {
  const Issuer root = make_root("a.test");
  CertSpec spec;
  spec.not_before_offset = std::chrono::seconds(-60);
  spec.lifetime = std::chrono::seconds(3600);
  const auto before = std::chrono::system_clock::now();
  const X509Svid svid = make_svid(root, "spiffe://a.test/web", spec);
  const auto expected = before + std::chrono::seconds(3540);
  CHECK(svid.not_after() >= expected - std::chrono::seconds(2));
  CHECK(svid.not_after() <= expected + std::chrono::seconds(2));
}

TEST_CASE("reads the SPIFFE ID from the single URI SAN, ignoring DNS SANs") {
  const Issuer root = make_root("a.test");
  CertSpec spec;
  spec.dns_sans = {"web.a.test", "web"};
  const X509Svid svid = make_svid(root, "spiffe://a.test/web", spec);
  auto id = spiffe_id_of(svid.leaf());
  REQUIRE(id.ok());
  CHECK(id->str() == "spiffe://a.test/web");
  CHECK(check_leaf_rules(svid.leaf()).ok());
}

TEST_CASE("leaf rules reject a trust domain ID") {
  const Issuer root = make_root("a.test");
  auto id = check_leaf_rules(root.certificate());
  REQUIRE_FALSE(id.ok());
  CHECK_THAT(id.error().message, Contains("spiffe://a.test has no path"));
}

TEST_CASE("signing rules accept CAs and reject leaves") {
  const Issuer root = make_root("a.test");
  const Issuer mid = make_intermediate(root);
  CHECK(check_signing_rules(root.certificate()).ok());
  CHECK(check_signing_rules(mid.certificate()).ok());
  const X509Svid leaf = make_svid(mid, "spiffe://a.test/web");
  auto st = check_signing_rules(leaf.leaf());
  REQUIRE_FALSE(st.ok());
  CHECK_THAT(st.error().message, Contains("not a signing certificate"));

  CertSpec ca_without_sign;
  ca_without_sign.is_ca = true;
  ca_without_sign.key_usage = X509v3_KU_CRL_SIGN;
  const X509Svid odd = make_svid(root, "spiffe://a.test/ca", ca_without_sign);
  auto odd_st = check_signing_rules(odd.leaf());
  REQUIRE_FALSE(odd_st.ok());
  CHECK_THAT(odd_st.error().message, Contains("keyUsage lacks keyCertSign"));
}

TEST_CASE("parses concatenated DER certificates and empty input") {
  const Issuer root = make_root("a.test");
  const Issuer mid = make_intermediate(root);
  const std::string der = der_of(root.certificate()) + der_of(mid.certificate());

  auto two = parse_der_certificates(der);
  REQUIRE(two.ok());
  CHECK(two->size() == 2);

  auto none = parse_der_certificates("");
  REQUIRE(none.ok());
  CHECK(none->empty());

  auto truncated = parse_der_certificates(der.substr(0, der.size() - 1));
  REQUIRE_FALSE(truncated.ok());
  CHECK_THAT(truncated.error().message, Contains("DER certificate #2"));

  auto garbage = parse_der_certificates(der + "xyz");
  REQUIRE_FALSE(garbage.ok());
  CHECK_THAT(garbage.error().message, Contains("#3"));
}

TEST_CASE("parses every CERTIFICATE block of a PEM text and skips other blocks") {
  const Issuer root = make_root("a.test");
  const X509Svid svid = make_svid(root, "spiffe://a.test/web");
  const std::string text = "leading text\n" + private_key_to_pem(svid.key.get()) +
                           certificate_to_pem(svid.leaf()) +
                           certificate_to_pem(root.certificate());
  auto certs = parse_pem_certificates(text);
  INFO((certs.ok() ? "" : certs.error().message));
  REQUIRE(certs.ok());
  CHECK(certs->size() == 2);

  auto none = parse_pem_certificates(private_key_to_pem(svid.key.get()));
  REQUIRE_FALSE(none.ok());
  CHECK_THAT(none.error().message, Contains("no CERTIFICATE block"));

  auto empty = parse_pem_certificates("");
  REQUIRE_FALSE(empty.ok());

  auto broken = parse_pem_certificates(
      "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n");
  REQUIRE_FALSE(broken.ok());
  CHECK_THAT(broken.error().message, Contains("PEM block #1"));
}
