#include "spiffe_tunnel/spiffe/issuer.h"

#include <openssl/pem.h>
#include <openssl/x509v3.h>
#include <catch2/catch.hpp>

#include "spiffe/test_pki.h"

using namespace spiffe_tunnel::spiffe;
using namespace spiffe_tunnel::spiffe::testing;
using Catch::Matchers::Contains;
using Catch::Matchers::StartsWith;

namespace {

bool is_critical(X509* cert, int nid) {
  const int idx = X509_get_ext_by_NID(cert, nid, -1);
  REQUIRE(idx >= 0);
  return X509_EXTENSION_get_critical(X509_get_ext(cert, idx)) == 1;
}

bool has_extension(X509* cert, int nid) {
  return X509_get_ext_by_NID(cert, nid, -1) >= 0;
}

}  // namespace

TEST_CASE("root CA is self-signed with the trust domain ID and critical CA extensions") {
  const Issuer root = make_root("a.test");
  X509* cert = root.certificate();
  REQUIRE(cert != nullptr);
  CHECK(root.chain_to_root().empty());
  CHECK(X509_check_issued(cert, cert) == X509_V_OK);
  CHECK(X509_verify(cert, root.key()) == 1);

  auto id = spiffe_id_of(cert);
  REQUIRE(id.ok());
  CHECK(id->str() == "spiffe://a.test");

  CHECK(X509_check_ca(cert) == 1);
  CHECK(is_critical(cert, NID_basic_constraints));
  CHECK(is_critical(cert, NID_key_usage));
  CHECK((X509_get_key_usage(cert) & (KU_KEY_CERT_SIGN | KU_CRL_SIGN)) ==
        (KU_KEY_CERT_SIGN | KU_CRL_SIGN));
  CHECK((X509_get_key_usage(cert) & KU_DIGITAL_SIGNATURE) == 0);
  REQUIRE(X509_get0_subject_key_id(cert) != nullptr);
  REQUIRE(X509_get0_authority_key_id(cert) != nullptr);
  CHECK(ASN1_OCTET_STRING_cmp(X509_get0_subject_key_id(cert),
                              X509_get0_authority_key_id(cert)) == 0);
  CHECK(check_signing_rules(cert).ok());
  CHECK(EVP_PKEY_is_a(root.key(), "EC"));
}

TEST_CASE("serials are random 16-byte positive integers") {
  const Issuer r1 = make_root("a.test");
  const Issuer r2 = make_root("a.test");
  const std::string s1 = spiffe_tunnel::base::serial_hex(r1.certificate());
  const std::string s2 = spiffe_tunnel::base::serial_hex(r2.certificate());
  CHECK(s1 != s2);
  CHECK(s1.size() == 32);
}

TEST_CASE("intermediate chains up to the root and ends with it") {
  const Issuer root = make_root("a.test");
  const Issuer mid = make_intermediate(root);
  const Issuer mid2 = make_intermediate(mid);
  REQUIRE(mid.chain_to_root().size() == 1);
  REQUIRE(mid2.chain_to_root().size() == 2);
  CHECK(mid2.chain_to_root()[0].get() == mid2.certificate());
  CHECK(X509_cmp(mid2.chain_to_root()[1].get(), mid.certificate()) == 0);
  CHECK(X509_check_issued(root.certificate(), mid.certificate()) == X509_V_OK);
  CHECK(X509_verify(mid.certificate(), root.key()) == 1);
  CHECK(spiffe_id_of(mid.certificate())->str() == "spiffe://a.test");
  CHECK(check_signing_rules(mid.certificate()).ok());
  CHECK(ASN1_TIME_compare(X509_get0_notAfter(mid.certificate()),
                          X509_get0_notAfter(root.certificate())) <= 0);

  auto other = root.create_intermediate(td_of("b.test"));
  REQUIRE(other.ok());
  CHECK(spiffe_id_of(other->certificate())->str() == "spiffe://b.test");
}

TEST_CASE("issued SVID is a valid leaf with the leaf chain but not the root") {
  const Issuer root = make_root("a.test");
  const Issuer mid = make_intermediate(root);
  const X509Svid svid = make_svid(mid, "spiffe://a.test/web");
  CHECK(svid.id.str() == "spiffe://a.test/web");
  CHECK(svid.hint.empty());
  REQUIRE(svid.chain.size() == 2);
  CHECK(X509_cmp(svid.chain[1].get(), mid.certificate()) == 0);
  X509* leaf = svid.leaf();
  CHECK(X509_verify(leaf, mid.key()) == 1);
  CHECK(check_leaf_rules(leaf).ok());
  CHECK(X509_check_ca(leaf) == 0);
  CHECK(is_critical(leaf, NID_key_usage));
  CHECK(X509_get_key_usage(leaf) == KU_DIGITAL_SIGNATURE);
  CHECK((X509_get_extended_key_usage(leaf) & (XKU_SSL_SERVER | XKU_SSL_CLIENT)) ==
        (XKU_SSL_SERVER | XKU_SSL_CLIENT));
  // Empty subject: RFC 5280 wants the SAN critical then.
  CHECK(X509_NAME_entry_count(X509_get_subject_name(leaf)) == 0);
  CHECK(is_critical(leaf, NID_subject_alt_name));
  CHECK(EVP_PKEY_eq(X509_get0_pubkey(leaf), svid.key.get()) == 1);
}

TEST_CASE("cert spec knobs shape the leaf") {
  const Issuer root = make_root("a.test");
  CertSpec spec;
  spec.common_name = "web";
  spec.dns_sans = {"web.a.test"};
  spec.key_usage = 0;
  spec.server_and_client_eku = false;
  const X509Svid svid = make_svid(root, "spiffe://a.test/web", spec);
  X509* leaf = svid.leaf();
  CHECK_FALSE(has_extension(leaf, NID_key_usage));
  CHECK_FALSE(has_extension(leaf, NID_ext_key_usage));
  CHECK_FALSE(is_critical(leaf, NID_subject_alt_name));
  CHECK(X509_check_host(leaf, "web.a.test", 0, 0, nullptr) == 1);

  char cn[64] = {0};
  X509_NAME_get_text_by_NID(X509_get_subject_name(leaf), NID_commonName, cn, sizeof(cn));
  CHECK(std::string(cn) == "web");
}

TEST_CASE("issue_svid does not apply the own SVID check") {
  const Issuer root = make_root("a.test");
  CertSpec spec;
  spec.is_ca = true;
  auto svid = root.issue_svid(id_of("spiffe://a.test/web"), spec);
  REQUIRE(svid.ok());
  CHECK(X509_check_ca(svid->leaf()) == 1);
}

TEST_CASE("rejects a common name longer than 64 bytes") {
  const Issuer root = make_root("a.test");
  CertSpec spec;
  spec.common_name = std::string(65, 'x');
  auto svid = root.issue_svid(id_of("spiffe://a.test/web"), spec);
  REQUIRE_FALSE(svid.ok());
  CHECK_THAT(svid.error().message, Contains("longer than 64 bytes"));
}

TEST_CASE("writes certificates and PKCS#8 keys as PEM that reads back") {
  const Issuer root = make_root("a.test");
  const std::string cert_pem = certificate_to_pem(root.certificate());
  CHECK_THAT(cert_pem, StartsWith("-----BEGIN CERTIFICATE-----"));
  const std::string key_pem = private_key_to_pem(root.key());
  CHECK_THAT(key_pem, StartsWith("-----BEGIN PRIVATE KEY-----"));

  spiffe_tunnel::base::BioPtr bio(
      BIO_new_mem_buf(key_pem.data(), static_cast<int>(key_pem.size())));
  spiffe_tunnel::base::EvpPkeyPtr key(
      PEM_read_bio_PrivateKey(bio.get(), nullptr, nullptr, nullptr));
  REQUIRE(key);
  CHECK(EVP_PKEY_eq(key.get(), root.key()) == 1);

  auto certs = parse_pem_certificates(cert_pem);
  REQUIRE(certs.ok());
  CHECK(X509_cmp(certs->front().get(), root.certificate()) == 0);
}
