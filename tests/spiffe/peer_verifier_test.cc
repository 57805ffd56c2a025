#include "spiffe_tunnel/spiffe/peer_verifier.h"

#include <chrono>

#include <openssl/x509v3.h>
#include <catch2/catch.hpp>

#include "spiffe/test_pki.h"

using namespace spiffe_tunnel::spiffe;
using namespace spiffe_tunnel::spiffe::testing;
using Catch::Matchers::Contains;
using std::chrono::hours;
using std::chrono::seconds;

namespace {

PeerVerification verify(const X509Svid& svid, const BundleSet& bundles,
                        std::chrono::system_clock::time_point now =
                            std::chrono::system_clock::now()) {
  auto intermediates = intermediates_of(svid);
  return verify_peer_chain(svid.leaf(), intermediates.get(), bundles, now);
}

// Adds an extendedKeyUsage of exactly `nids` to the leaf and re-signs it with `issuer`.
void set_eku(X509* leaf, std::initializer_list<int> nids, const Issuer& issuer) {
  EXTENDED_KEY_USAGE* eku = sk_ASN1_OBJECT_new_null();
  for (int nid : nids) {
    sk_ASN1_OBJECT_push(eku, OBJ_nid2obj(nid));
  }
  REQUIRE(X509_add1_ext_i2d(leaf, NID_ext_key_usage, eku, 0, X509V3_ADD_REPLACE) == 1);
  EXTENDED_KEY_USAGE_free(eku);
  resign(leaf, issuer.key());
}

// Makes `ca` (with key `ca_key`) the issuer of the SVID's leaf and appends it to the chain.
// The leaf's AKI is dropped so chain building finds `ca` by name alone.
void move_under(X509Svid& svid, spiffe_tunnel::base::X509Ptr ca, EVP_PKEY* ca_key) {
  X509* leaf = svid.leaf();
  REQUIRE(X509_set_issuer_name(leaf, X509_get_subject_name(ca.get())) == 1);
  X509_EXTENSION_free(
      X509_delete_ext(leaf, X509_get_ext_by_NID(leaf, NID_authority_key_identifier, -1)));
  resign(leaf, ca_key);
  svid.chain.push_back(std::move(ca));
}

void require_rejected(const PeerVerification& v, Rejection why, const std::string& detail) {
  INFO(v.detail);
  REQUIRE(v.rejection == why);
  CHECK_FALSE(v.ok());
  CHECK_THAT(v.detail, Contains(detail));
}

}  // namespace

TEST_CASE("labels every rejection in snake_case") {
  CHECK(rejection_label(Rejection::kNone) == "none");
  CHECK(rejection_label(Rejection::kNoCertificate) == "no_certificate");
  CHECK(rejection_label(Rejection::kNotSvid) == "not_svid");
  CHECK(rejection_label(Rejection::kUntrustedDomain) == "untrusted_domain");
  CHECK(rejection_label(Rejection::kExpired) == "expired");
  CHECK(rejection_label(Rejection::kChainInvalid) == "chain_invalid");
  CHECK(rejection_label(Rejection::kLeafRules) == "leaf_rules");
  CHECK(rejection_label(Rejection::kNotAuthorized) == "not_authorized");
}

TEST_CASE("accepts a valid leaf signed directly by the root") {
  const Issuer root = make_root("a.test");
  const X509Svid svid = make_svid(root, "spiffe://a.test/web");
  const PeerVerification v = verify(svid, bundle_set_of({&root}));
  INFO(v.detail);
  REQUIRE(v.ok());
  CHECK(v.rejection == Rejection::kNone);
  REQUIRE(v.id);
  CHECK(v.id->str() == "spiffe://a.test/web");
  CHECK(v.detail.empty());
}

TEST_CASE("accepts a valid leaf signed via two intermediates") {
  const Issuer root = make_root("a.test");
  const Issuer mid1 = make_intermediate(root);
  const Issuer mid2 = make_intermediate(mid1);
  const X509Svid svid = make_svid(mid2, "spiffe://a.test/web");
  REQUIRE(svid.chain.size() == 3);
  const PeerVerification v = verify(svid, bundle_set_of({&root}));
  INFO(v.detail);
  REQUIRE(v.ok());
  CHECK(v.id->str() == "spiffe://a.test/web");
}

TEST_CASE("accepts a valid leaf when the bundle set holds other trust domains too") {
  const Issuer a = make_root("a.test");
  const Issuer b = make_root("b.test");
  const X509Svid svid = make_svid(b, "spiffe://b.test/db");
  const PeerVerification v = verify(svid, bundle_set_of({&a, &b}));
  INFO(v.detail);
  CHECK(v.ok());
}

TEST_CASE("rejects a peer that sent no certificate") {
  const Issuer root = make_root("a.test");
  const PeerVerification v =
      verify_peer_chain(nullptr, nullptr, bundle_set_of({&root}), std::chrono::system_clock::now());
  require_rejected(v, Rejection::kNoCertificate, "no certificate");
  CHECK_FALSE(v.id);
}

TEST_CASE("rejects a leaf without a URI SAN") {
  const Issuer root = make_root("a.test");
  CertSpec spec;
  spec.uri_sans = {};
  spec.dns_sans = {"web.a.test"};
  spec.common_name = "spiffe://a.test/web";  // identity never comes from the CN
  auto key = generate_ec_p256_key();
  REQUIRE(key.ok());
  auto leaf = root.issue(spec, key->get());
  REQUIRE(leaf.ok());
  const PeerVerification v = verify_peer_chain(leaf->get(), nullptr, bundle_set_of({&root}),
                                               std::chrono::system_clock::now());
  require_rejected(v, Rejection::kNotSvid, "no URI subjectAltName");
  CHECK_FALSE(v.id);
}

TEST_CASE("rejects a leaf without any SAN extension") {
  const Issuer root = make_root("a.test");
  CertSpec spec;
  spec.common_name = "web";
  auto key = generate_ec_p256_key();
  REQUIRE(key.ok());
  auto leaf = root.issue(spec, key->get());
  REQUIRE(leaf.ok());
  const PeerVerification v = verify_peer_chain(leaf->get(), nullptr, bundle_set_of({&root}),
                                               std::chrono::system_clock::now());
  require_rejected(v, Rejection::kNotSvid, "no subjectAltName extension");
}

TEST_CASE("rejects a leaf with two URI SANs even when both are equal") {
  const Issuer root = make_root("a.test");
  CertSpec spec;
  spec.uri_sans = {"spiffe://a.test/web", "spiffe://a.test/web"};
  const X509Svid svid = make_svid(root, "spiffe://a.test/web", spec);
  const PeerVerification v = verify(svid, bundle_set_of({&root}));
  require_rejected(v, Rejection::kNotSvid, "2 URI subjectAltNames (exactly one allowed)");
}

TEST_CASE("rejects a leaf whose only URI SAN is a trust domain ID") {
  const Issuer root = make_root("a.test");
  CertSpec spec;
  spec.uri_sans = {"spiffe://a.test"};
  const X509Svid svid = make_svid(root, "spiffe://a.test/web", spec);
  const PeerVerification v = verify(svid, bundle_set_of({&root}));
  require_rejected(v, Rejection::kNotSvid, "peer spiffe://a.test is a trust domain ID");
  REQUIRE(v.id);
  CHECK(v.id->is_root());
}

TEST_CASE("rejects a leaf whose URI SAN is not a valid SPIFFE ID") {
  const Issuer root = make_root("a.test");
  CertSpec spec;
  spec.uri_sans = {"spiffe://A.test/web"};
  const X509Svid svid = make_svid(root, "spiffe://a.test/web", spec);
  const PeerVerification v = verify(svid, bundle_set_of({&root}));
  require_rejected(v, Rejection::kNotSvid, "trust domain contains 'A'");
  CHECK_FALSE(v.id);

  spec.uri_sans = {"https://a.test/web"};
  const X509Svid https = make_svid(root, "spiffe://a.test/web", spec);
  require_rejected(verify(https, bundle_set_of({&root})), Rejection::kNotSvid,
                   "\"https://a.test/web\" is not a SPIFFE ID");
}

TEST_CASE("rejects a leaf whose trust domain has no bundle") {
  const Issuer a = make_root("a.test");
  const Issuer b = make_root("b.test");
  const X509Svid svid = make_svid(a, "spiffe://a.test/web");
  const PeerVerification v = verify(svid, bundle_set_of({&b}));
  require_rejected(v, Rejection::kUntrustedDomain,
                   "peer spiffe://a.test/web: no bundle is held for trust domain \"a.test\"");
  REQUIRE(v.id);
  CHECK(v.id->str() == "spiffe://a.test/web");
}

TEST_CASE("rejects every leaf of a trust domain whose bundle is empty") {
  const Issuer a = make_root("a.test");
  const X509Svid svid = make_svid(a, "spiffe://a.test/web");
  BundleSet set;
  set.put(std::make_shared<const Bundle>(td_of("a.test"),
                                         std::vector<spiffe_tunnel::base::X509Ptr>{}));
  const PeerVerification v = verify(svid, set);
  require_rejected(v, Rejection::kUntrustedDomain, "bundle of trust domain \"a.test\" is empty");
}

TEST_CASE("rejects a leaf claiming trust domain A but signed by trust domain B's CA") {
  const Issuer a = make_root("a.test");
  const Issuer b = make_root("b.test");
  // B's CA mints an SVID in A's name; B's root is trusted, but only for B.
  const X509Svid forged = make_svid(b, "spiffe://a.test/x");
  const PeerVerification v = verify(forged, bundle_set_of({&a, &b}));
  require_rejected(v, Rejection::kChainInvalid, "peer spiffe://a.test/x");
  CHECK_THAT(v.detail, Contains("bundle of trust domain \"a.test\""));
  CHECK_THAT(v.detail, Contains("unable to get local issuer certificate"));
}

TEST_CASE("rejects a leaf claiming trust domain A via an intermediate of trust domain B") {
  const Issuer a = make_root("a.test");
  const Issuer b = make_root("b.test");
  const Issuer b_mid = make_intermediate(b);
  const X509Svid forged = make_svid(b_mid, "spiffe://a.test/x");
  require_rejected(verify(forged, bundle_set_of({&a, &b})), Rejection::kChainInvalid,
                   "does not verify against the bundle of trust domain \"a.test\"");
}

TEST_CASE("rejects an expired leaf") {
  const Issuer root = make_root("a.test");
  CertSpec spec;
  spec.not_before_offset = -hours(2);
  spec.lifetime = hours(1);
  const X509Svid svid = make_svid(root, "spiffe://a.test/web", spec);
  const PeerVerification v = verify(svid, bundle_set_of({&root}));
  require_rejected(v, Rejection::kExpired, "has expired");
  CHECK_THAT(v.detail, Contains("peer spiffe://a.test/web"));
}

TEST_CASE("rejects a leaf that is not yet valid") {
  const Issuer root = make_root("a.test");
  CertSpec spec;
  spec.not_before_offset = hours(1);
  const X509Svid svid = make_svid(root, "spiffe://a.test/web", spec);
  require_rejected(verify(svid, bundle_set_of({&root})), Rejection::kExpired, "is not yet valid");
}

TEST_CASE("rejects a valid leaf when verified at a time after its root expired") {
  const Issuer root = make_root("a.test");
  const X509Svid svid = make_svid(root, "spiffe://a.test/web");
  const auto later = std::chrono::system_clock::now() + hours(48);
  require_rejected(verify(svid, bundle_set_of({&root}), later), Rejection::kExpired,
                   "has expired");
}

TEST_CASE("judges validity at the given time, not the wall clock") {
  const Issuer root = make_root("a.test");
  CertSpec spec;
  spec.not_before_offset = hours(1);
  const X509Svid svid = make_svid(root, "spiffe://a.test/web", spec);
  const auto later = std::chrono::system_clock::now() + std::chrono::minutes(90);
  const PeerVerification v = verify(svid, bundle_set_of({&root}), later);
  INFO(v.detail);
  CHECK(v.ok());
}

TEST_CASE("rejects a leaf whose intermediate has expired") {
  const Issuer root = make_root("a.test");
  CertSpec ca_spec;
  ca_spec.is_ca = true;
  ca_spec.uri_sans = {"spiffe://a.test"};
  ca_spec.common_name = "expired CA";
  ca_spec.not_before_offset = -hours(3);
  ca_spec.lifetime = hours(1);
  auto key = generate_ec_p256_key();
  REQUIRE(key.ok());
  auto mid = root.issue(ca_spec, key->get());
  REQUIRE(mid.ok());
  // A leaf signed by the expired intermediate's key.
  X509Svid svid = make_svid(root, "spiffe://a.test/web");
  move_under(svid, std::move(*mid), key->get());
  require_rejected(verify(svid, bundle_set_of({&root})), Rejection::kExpired, "at depth 1");
}

TEST_CASE("rejects a leaf that is a CA") {
  const Issuer root = make_root("a.test");
  CertSpec spec;
  spec.is_ca = true;
  spec.key_usage = X509v3_KU_DIGITAL_SIGNATURE;
  const X509Svid svid = make_svid(root, "spiffe://a.test/web", spec);
  const PeerVerification v = verify(svid, bundle_set_of({&root}));
  require_rejected(v, Rejection::kLeafRules, "is a CA certificate");
  CHECK_THAT(v.detail, Contains("spiffe://a.test/web"));
  REQUIRE(v.id);
}

TEST_CASE("rejects a leaf whose keyUsage lacks digitalSignature") {
  const Issuer root = make_root("a.test");
  CertSpec spec;
  spec.key_usage = X509v3_KU_KEY_ENCIPHERMENT | X509v3_KU_KEY_AGREEMENT;
  const X509Svid svid = make_svid(root, "spiffe://a.test/web", spec);
  require_rejected(verify(svid, bundle_set_of({&root})), Rejection::kLeafRules,
                   "keyUsage lacks digitalSignature");
}

TEST_CASE("rejects a leaf whose keyUsage has keyCertSign") {
  const Issuer root = make_root("a.test");
  CertSpec spec;
  spec.key_usage = X509v3_KU_DIGITAL_SIGNATURE | X509v3_KU_KEY_CERT_SIGN;
  const X509Svid svid = make_svid(root, "spiffe://a.test/web", spec);
  require_rejected(verify(svid, bundle_set_of({&root})), Rejection::kLeafRules,
                   "keyUsage has keyCertSign");
}

TEST_CASE("rejects a leaf whose keyUsage has cRLSign") {
  const Issuer root = make_root("a.test");
  CertSpec spec;
  spec.key_usage = X509v3_KU_DIGITAL_SIGNATURE | X509v3_KU_CRL_SIGN;
  const X509Svid svid = make_svid(root, "spiffe://a.test/web", spec);
  require_rejected(verify(svid, bundle_set_of({&root})), Rejection::kLeafRules,
                   "keyUsage has cRLSign");
}

TEST_CASE("rejects a leaf without a keyUsage extension") {
  const Issuer root = make_root("a.test");
  CertSpec spec;
  spec.key_usage = 0;
  const X509Svid svid = make_svid(root, "spiffe://a.test/web", spec);
  require_rejected(verify(svid, bundle_set_of({&root})), Rejection::kLeafRules,
                   "has no keyUsage extension");
}

TEST_CASE("rejects a leaf whose extendedKeyUsage lacks clientAuth") {
  const Issuer root = make_root("a.test");
  CertSpec spec;
  spec.server_and_client_eku = false;
  X509Svid svid = make_svid(root, "spiffe://a.test/web", spec);
  set_eku(svid.leaf(), {NID_server_auth}, root);
  require_rejected(verify(svid, bundle_set_of({&root})), Rejection::kLeafRules,
                   "extendedKeyUsage lacks clientAuth");
}

TEST_CASE("rejects a leaf whose extendedKeyUsage lacks serverAuth") {
  const Issuer root = make_root("a.test");
  CertSpec spec;
  spec.server_and_client_eku = false;
  X509Svid svid = make_svid(root, "spiffe://a.test/web", spec);
  set_eku(svid.leaf(), {NID_client_auth, NID_code_sign}, root);
  require_rejected(verify(svid, bundle_set_of({&root})), Rejection::kLeafRules,
                   "extendedKeyUsage lacks serverAuth");
}

TEST_CASE("accepts a leaf without extendedKeyUsage") {
  const Issuer root = make_root("a.test");
  CertSpec spec;
  spec.server_and_client_eku = false;
  const X509Svid svid = make_svid(root, "spiffe://a.test/web", spec);
  const PeerVerification v = verify(svid, bundle_set_of({&root}));
  INFO(v.detail);
  CHECK(v.ok());
}

TEST_CASE("rejects a chain whose intermediate is not a CA") {
  const Issuer root = make_root("a.test");
  // A leaf-shaped certificate (cA false, digitalSignature) used as an issuer.
  CertSpec not_ca;
  not_ca.uri_sans = {"spiffe://a.test/mid"};
  not_ca.common_name = "not a CA";
  auto mid_key = generate_ec_p256_key();
  REQUIRE(mid_key.ok());
  auto mid = root.issue(not_ca, mid_key->get());
  REQUIRE(mid.ok());
  X509Svid svid = make_svid(root, "spiffe://a.test/web");
  move_under(svid, std::move(*mid), mid_key->get());
  require_rejected(verify(svid, bundle_set_of({&root})), Rejection::kChainInvalid,
                   "peer spiffe://a.test/web");
}

TEST_CASE("rejects a chain whose intermediate is a CA without keyUsage") {
  // OpenSSL treats a missing keyUsage as "any usage"; X509-SVID.md requires keyCertSign.
  const Issuer root = make_root("a.test");
  CertSpec ca;
  ca.is_ca = true;
  ca.key_usage = 0;
  ca.uri_sans = {"spiffe://a.test"};
  ca.common_name = "CA without keyUsage";
  auto mid_key = generate_ec_p256_key();
  REQUIRE(mid_key.ok());
  auto mid = root.issue(ca, mid_key->get());
  REQUIRE(mid.ok());
  X509Svid svid = make_svid(root, "spiffe://a.test/web");
  move_under(svid, std::move(*mid), mid_key->get());
  const PeerVerification v = verify(svid, bundle_set_of({&root}));
  require_rejected(v, Rejection::kChainInvalid, "keyUsage lacks keyCertSign");
  CHECK_THAT(v.detail, Contains("intermediate"));
}

TEST_CASE("rejects a leaf signed by a different CA with the same name") {
  const Issuer trusted = make_root("a.test");
  const Issuer impostor = make_root("a.test");  // same subject name, different key
  REQUIRE(X509_NAME_cmp(X509_get_subject_name(trusted.certificate()),
                        X509_get_subject_name(impostor.certificate())) == 0);
  const X509Svid svid = make_svid(impostor, "spiffe://a.test/web");
  require_rejected(verify(svid, bundle_set_of({&trusted})), Rejection::kChainInvalid,
                   "peer spiffe://a.test/web");
}

TEST_CASE("rejects a leaf whose signature does not match its issuer's key") {
  const Issuer root = make_root("a.test");
  X509Svid svid = make_svid(root, "spiffe://a.test/web");
  // Same issuer name and key identifier, but signed with another key.
  auto other = generate_ec_p256_key();
  REQUIRE(other.ok());
  resign(svid.leaf(), other->get());
  require_rejected(verify(svid, bundle_set_of({&root})), Rejection::kChainInvalid,
                   "certificate signature failure");
}

TEST_CASE("uses only the peer's trust domain roots even with its intermediates presented") {
  // The peer presents B's root as an "intermediate"; it must not become a trust anchor for A.
  const Issuer a = make_root("a.test");
  const Issuer b = make_root("b.test");
  X509Svid forged = make_svid(b, "spiffe://a.test/x");
  forged.chain.push_back(spiffe_tunnel::base::share(b.certificate()));
  require_rejected(verify(forged, bundle_set_of({&a})), Rejection::kChainInvalid,
                   "peer spiffe://a.test/x");
}
