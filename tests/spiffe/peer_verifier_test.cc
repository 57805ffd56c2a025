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

// The usual arrangement: trust domain a.test whose root is the only bundle, and leaves
// spiffe://a.test/web issued by that root from a CertSpec.
struct TrustDomainA {
  const Issuer root = make_root("a.test");
  const BundleSet bundles = bundle_set_of({&root});

  X509Svid web(CertSpec spec = {}) const {
    return make_svid(root, "spiffe://a.test/web", std::move(spec));
  }
  PeerVerification verify(const X509Svid& svid, std::chrono::system_clock::time_point now =
                                                    std::chrono::system_clock::now()) const {
    return ::verify(svid, bundles, now);
  }
  // A bare certificate (no SVID) the root issues from `spec`, verified on its own.
  PeerVerification verify_issued(const CertSpec& spec) const {
    auto key = generate_ec_p256_key();
    REQUIRE(key.ok());
    auto cert = root.issue(spec, key->get());
    REQUIRE(cert.ok());
    return verify_peer_chain(cert->get(), nullptr, bundles, std::chrono::system_clock::now());
  }
  // spiffe://a.test/web issued by an intermediate that the root issues from `ca_spec`.
  X509Svid web_under(const CertSpec& ca_spec) const {
    auto ca_key = generate_ec_p256_key();
    REQUIRE(ca_key.ok());
    auto ca = root.issue(ca_spec, ca_key->get());
    REQUIRE(ca.ok());
    X509Svid svid = web();
    move_under(svid, std::move(*ca), ca_key->get());
    return svid;
  }
};

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

TEST_CASE_METHOD(TrustDomainA, "accepts a valid leaf signed directly by the root") {
  const PeerVerification v = verify(web());
  INFO(v.detail);
  REQUIRE(v.ok());
  CHECK(v.rejection == Rejection::kNone);
  REQUIRE(v.id);
  CHECK(v.id->str() == "spiffe://a.test/web");
  CHECK(v.detail.empty());
}

TEST_CASE_METHOD(TrustDomainA, "accepts a valid leaf signed via two intermediates") {
  const Issuer mid1 = make_intermediate(root);
  const Issuer mid2 = make_intermediate(mid1);
  const X509Svid svid = make_svid(mid2, "spiffe://a.test/web");
  REQUIRE(svid.chain.size() == 3);
  const PeerVerification v = verify(svid);
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

TEST_CASE_METHOD(TrustDomainA, "rejects a peer that sent no certificate") {
  const PeerVerification v =
      verify_peer_chain(nullptr, nullptr, bundles, std::chrono::system_clock::now());
  require_rejected(v, Rejection::kNoCertificate, "no certificate");
  CHECK_FALSE(v.id);
}

TEST_CASE_METHOD(TrustDomainA, "rejects a leaf without a URI SAN") {
  const PeerVerification v = verify_issued({
      .uri_sans = {},
      .dns_sans = {"web.a.test"},
      .common_name = "spiffe://a.test/web",  // identity never comes from the CN
  });
  require_rejected(v, Rejection::kNotSvid, "no URI subjectAltName");
  CHECK_FALSE(v.id);
}

TEST_CASE_METHOD(TrustDomainA, "rejects a leaf without any SAN extension") {
  const PeerVerification v = verify_issued({.common_name = "web"});
  require_rejected(v, Rejection::kNotSvid, "no subjectAltName extension");
}

TEST_CASE_METHOD(TrustDomainA, "rejects a leaf with two URI SANs even when both are equal") {
  const PeerVerification v =
      verify(web({.uri_sans = {"spiffe://a.test/web", "spiffe://a.test/web"}}));
  require_rejected(v, Rejection::kNotSvid, "2 URI subjectAltNames (exactly one allowed)");
}

TEST_CASE_METHOD(TrustDomainA, "rejects a leaf whose only URI SAN is a trust domain ID") {
  const PeerVerification v = verify(web({.uri_sans = {"spiffe://a.test"}}));
  require_rejected(v, Rejection::kNotSvid, "peer spiffe://a.test is a trust domain ID");
  REQUIRE(v.id);
  CHECK(v.id->is_root());
}

TEST_CASE_METHOD(TrustDomainA, "rejects a leaf whose URI SAN is not a valid SPIFFE ID") {
  const PeerVerification v = verify(web({.uri_sans = {"spiffe://A.test/web"}}));
  require_rejected(v, Rejection::kNotSvid, "trust domain contains 'A'");
  CHECK_FALSE(v.id);

  require_rejected(verify(web({.uri_sans = {"https://a.test/web"}})), Rejection::kNotSvid,
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

TEST_CASE_METHOD(TrustDomainA, "rejects an expired leaf") {
  const PeerVerification v = verify(web({.not_before_offset = -hours(2), .lifetime = hours(1)}));
  require_rejected(v, Rejection::kExpired, "has expired");
  CHECK_THAT(v.detail, Contains("peer spiffe://a.test/web"));
}

TEST_CASE_METHOD(TrustDomainA, "rejects a leaf that is not yet valid") {
  require_rejected(verify(web({.not_before_offset = hours(1)})), Rejection::kExpired,
                   "is not yet valid");
}

TEST_CASE_METHOD(TrustDomainA,
                 "rejects a valid leaf when verified at a time after its root expired") {
  const auto later = std::chrono::system_clock::now() + hours(48);
  require_rejected(verify(web(), later), Rejection::kExpired, "has expired");
}

TEST_CASE_METHOD(TrustDomainA, "judges validity at the given time, not the wall clock") {
  const X509Svid svid = web({.not_before_offset = hours(1)});
  const auto later = std::chrono::system_clock::now() + std::chrono::minutes(90);
  const PeerVerification v = verify(svid, later);
  INFO(v.detail);
  CHECK(v.ok());
}

TEST_CASE_METHOD(TrustDomainA, "rejects a leaf whose intermediate has expired") {
  // A leaf signed by the expired intermediate's key.
  const X509Svid svid = web_under({
      .uri_sans = {"spiffe://a.test"},
      .common_name = "expired CA",
      .is_ca = true,
      .not_before_offset = -hours(3),
      .lifetime = hours(1),
  });
  require_rejected(verify(svid), Rejection::kExpired, "at depth 1");
}

TEST_CASE_METHOD(TrustDomainA, "rejects a leaf that is a CA") {
  const PeerVerification v = verify(web({.is_ca = true, .key_usage = X509v3_KU_DIGITAL_SIGNATURE}));
  require_rejected(v, Rejection::kLeafRules, "is a CA certificate");
  CHECK_THAT(v.detail, Contains("spiffe://a.test/web"));
  REQUIRE(v.id);
}

TEST_CASE_METHOD(TrustDomainA, "rejects a leaf whose keyUsage lacks digitalSignature") {
  require_rejected(verify(web({.key_usage = X509v3_KU_KEY_ENCIPHERMENT | X509v3_KU_KEY_AGREEMENT})),
                   Rejection::kLeafRules, "keyUsage lacks digitalSignature");
}

TEST_CASE_METHOD(TrustDomainA, "rejects a leaf whose keyUsage has keyCertSign") {
  const unsigned usage = X509v3_KU_DIGITAL_SIGNATURE | X509v3_KU_KEY_CERT_SIGN;
  require_rejected(verify(web({.key_usage = usage})), Rejection::kLeafRules,
                   "keyUsage has keyCertSign");
}

TEST_CASE_METHOD(TrustDomainA, "rejects a leaf whose keyUsage has cRLSign") {
  require_rejected(verify(web({.key_usage = X509v3_KU_DIGITAL_SIGNATURE | X509v3_KU_CRL_SIGN})),
                   Rejection::kLeafRules, "keyUsage has cRLSign");
}

TEST_CASE_METHOD(TrustDomainA, "rejects a leaf without a keyUsage extension") {
  require_rejected(verify(web({.key_usage = 0})), Rejection::kLeafRules,
                   "has no keyUsage extension");
}

TEST_CASE_METHOD(TrustDomainA, "rejects a leaf whose extendedKeyUsage lacks clientAuth") {
  X509Svid svid = web({.server_and_client_eku = false});
  set_eku(svid.leaf(), {NID_server_auth}, root);
  require_rejected(verify(svid), Rejection::kLeafRules, "extendedKeyUsage lacks clientAuth");
}

TEST_CASE_METHOD(TrustDomainA, "rejects a leaf whose extendedKeyUsage lacks serverAuth") {
  X509Svid svid = web({.server_and_client_eku = false});
  set_eku(svid.leaf(), {NID_client_auth, NID_code_sign}, root);
  require_rejected(verify(svid), Rejection::kLeafRules, "extendedKeyUsage lacks serverAuth");
}

TEST_CASE_METHOD(TrustDomainA, "accepts a leaf without extendedKeyUsage") {
  const PeerVerification v = verify(web({.server_and_client_eku = false}));
  INFO(v.detail);
  CHECK(v.ok());
}

TEST_CASE_METHOD(TrustDomainA, "rejects a chain whose intermediate is not a CA") {
  // A leaf-shaped certificate (cA false, digitalSignature) used as an issuer.
  const X509Svid svid = web_under({.uri_sans = {"spiffe://a.test/mid"}, .common_name = "not a CA"});
  require_rejected(verify(svid), Rejection::kChainInvalid, "peer spiffe://a.test/web");
}

TEST_CASE_METHOD(TrustDomainA, "rejects a chain whose intermediate is a CA without keyUsage") {
  // OpenSSL treats a missing keyUsage as "any usage"; X509-SVID.md requires keyCertSign.
  const X509Svid svid = web_under({
      .uri_sans = {"spiffe://a.test"},
      .common_name = "CA without keyUsage",
      .is_ca = true,
      .key_usage = 0,
  });
  const PeerVerification v = verify(svid);
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

TEST_CASE_METHOD(TrustDomainA, "rejects a leaf whose signature does not match its issuer's key") {
  X509Svid svid = web();
  // Same issuer name and key identifier, but signed with another key.
  auto other = generate_ec_p256_key();
  REQUIRE(other.ok());
  resign(svid.leaf(), other->get());
  require_rejected(verify(svid), Rejection::kChainInvalid, "certificate signature failure");
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

// ---- Security level and signing-certificate URI SANs --------------------------------------------

namespace {

EVP_PKEY* rsa_key(unsigned bits) {
  EVP_PKEY* key = EVP_RSA_gen(bits);
  REQUIRE(key != nullptr);
  return key;
}

// A leaf for spiffe://a.test/web with `key`, issued by `issuer` and verified at `level`.
PeerVerification verify_leaf_key(const TrustDomainA& a, EVP_PKEY* key, int level) {
  auto cert = a.root.issue({.uri_sans = {"spiffe://a.test/web"}}, key);
  REQUIRE(cert.ok());
  return verify_peer_chain(cert->get(), nullptr, a.bundles, std::chrono::system_clock::now(),
                           VerifyParams{.security_level = level});
}

}  // namespace

TEST_CASE("verifies at security level 2 unless told otherwise") {
  CHECK(VerifyParams{}.security_level == 2);
}

TEST_CASE_METHOD(TrustDomainA, "rejects an RSA-1024 leaf at security level 2") {
  spiffe_tunnel::base::EvpPkeyPtr key(rsa_key(1024));
  const PeerVerification v = verify_leaf_key(*this, key.get(), 2);
  require_rejected(v, Rejection::kChainInvalid, "EE certificate key too weak");
  CHECK_THAT(v.detail, Contains("security level 2"));
  CHECK_THAT(v.detail, Contains("peer spiffe://a.test/web"));
  // The same leaf passes where the operator lowered the level: the level is the caller's.
  const PeerVerification low = verify_leaf_key(*this, key.get(), 1);
  INFO(low.detail);
  CHECK(low.ok());
}

TEST_CASE_METHOD(TrustDomainA, "accepts RSA-2048 and ECDSA P-256 leaves signed with SHA-256") {
  spiffe_tunnel::base::EvpPkeyPtr rsa(rsa_key(2048));
  const PeerVerification v = verify_leaf_key(*this, rsa.get(), 2);
  INFO(v.detail);
  CHECK(v.ok());
  auto ec = generate_ec_p256_key();
  REQUIRE(ec.ok());
  const PeerVerification w = verify_leaf_key(*this, ec->get(), 2);
  INFO(w.detail);
  CHECK(w.ok());
}

TEST_CASE_METHOD(TrustDomainA, "rejects a chain whose intermediate is signed with SHA-1") {
  Issuer mid = make_intermediate(root);
  REQUIRE(X509_sign(mid.certificate(), root.key(), EVP_sha1()) > 0);
  const X509Svid svid = make_svid(mid, "spiffe://a.test/web");
  REQUIRE(svid.chain.size() == 2);
  const PeerVerification v = verify(svid);
  require_rejected(v, Rejection::kChainInvalid, "CA signature digest algorithm too weak");
  CHECK_THAT(v.detail, Contains("at depth 1"));
  CHECK_THAT(v.detail, Contains("security level 2"));
}

TEST_CASE("carries the security level, depth and flags of an OpenSSL verify context") {
  std::unique_ptr<X509_VERIFY_PARAM, spiffe_tunnel::base::OpenSslDeleter<X509_VERIFY_PARAM_free>>
      param(X509_VERIFY_PARAM_new());
  REQUIRE(param);
  // Unset (auth level -1) keeps the default rather than switching the checks off.
  CHECK(VerifyParams::from(param.get()).security_level == 2);
  X509_VERIFY_PARAM_set_auth_level(param.get(), 3);
  X509_VERIFY_PARAM_set_depth(param.get(), 4);
  X509_VERIFY_PARAM_set_flags(param.get(), X509_V_FLAG_X509_STRICT | X509_V_FLAG_USE_CHECK_TIME);
  const VerifyParams p = VerifyParams::from(param.get());
  CHECK(p.security_level == 3);
  CHECK(p.max_depth == 4);
  CHECK(p.flags == X509_V_FLAG_X509_STRICT);
}

TEST_CASE_METHOD(TrustDomainA, "applies the carried depth limit") {
  const Issuer mid1 = make_intermediate(root);
  const Issuer mid2 = make_intermediate(mid1);
  const X509Svid svid = make_svid(mid2, "spiffe://a.test/web");
  auto intermediates = intermediates_of(svid);
  const PeerVerification v =
      verify_peer_chain(svid.leaf(), intermediates.get(), bundles,
                        std::chrono::system_clock::now(), VerifyParams{.max_depth = 1});
  require_rejected(v, Rejection::kChainInvalid, "certificate chain too long");
}

TEST_CASE_METHOD(TrustDomainA, "rejects an intermediate whose URI SAN is not the trust domain ID") {
  for (const char* foreign : {"spiffe://b.test", "spiffe://a.test/mid", "https://a.test"}) {
    INFO(foreign);
    const X509Svid svid = web_under({.uri_sans = {foreign}, .common_name = "CA", .is_ca = true});
    const PeerVerification v = verify(svid);
    require_rejected(v, Rejection::kChainInvalid, "intermediate");
    CHECK_THAT(v.detail, Contains(std::string("URI subjectAltName \"") + foreign + "\""));
    CHECK_THAT(v.detail, Contains("only spiffe://a.test is allowed"));
  }
  // The trust domain ID alongside a foreign one is refused too.
  const X509Svid both = web_under(
      {.uri_sans = {"spiffe://a.test", "spiffe://b.test"}, .common_name = "CA", .is_ca = true});
  require_rejected(verify(both), Rejection::kChainInvalid, "\"spiffe://b.test\"");
}

TEST_CASE_METHOD(TrustDomainA, "accepts an intermediate that names exactly its trust domain") {
  for (const std::vector<std::string>& sans :
       {std::vector<std::string>{"spiffe://a.test"}, std::vector<std::string>{}}) {
    const X509Svid svid = web_under({.uri_sans = sans, .common_name = "CA", .is_ca = true});
    const PeerVerification v = verify(svid);
    INFO(v.detail);
    CHECK(v.ok());
  }
}
