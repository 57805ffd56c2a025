#include "spiffe_tunnel/spiffe/issuer.h"

#include <string>

#include <openssl/bn.h>
#include <openssl/ec.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/x509v3.h>

namespace spiffe_tunnel::spiffe {
namespace {

using base::Error;
using base::Result;
using base::Status;

// RFC 5280 upper bound for a commonName (ub-common-name).
constexpr size_t kMaxCommonNameBytes = 64;

Error openssl_error(const std::string& what) {
  const std::string queue = base::drain_openssl_errors();
  return Error{what + (queue.empty() ? "" : ": " + queue)};
}

// A random 16-byte serial (RFC 5280 allows up to 20 octets; CA/B asks for >= 64 random bits).
Status set_random_serial(X509* cert) {
  unsigned char bytes[16];
  if (RAND_bytes(bytes, sizeof(bytes)) != 1) {
    return openssl_error("cannot generate a certificate serial");
  }
  // Top bit clear keeps the DER INTEGER positive within 16 octets; the next bit set keeps it
  // non-zero and of fixed length.
  bytes[0] = static_cast<unsigned char>((bytes[0] & 0x7f) | 0x40);
  std::unique_ptr<BIGNUM, base::OpenSslDeleter<BN_free>> bn(
      BN_bin2bn(bytes, sizeof(bytes), nullptr));
  if (!bn || BN_to_ASN1_INTEGER(bn.get(), X509_get_serialNumber(cert)) == nullptr) {
    return openssl_error("cannot set a certificate serial");
  }
  return {};
}

// keyUsage flags (X509v3_KU_*) are laid out as the DER BIT STRING read big-endian: bit n of
// the string is flag 0x80 >> n for n < 8, and decipherOnly (bit 8) is 0x8000.
Status add_key_usage(X509* cert, unsigned flags) {
  std::unique_ptr<ASN1_BIT_STRING, base::OpenSslDeleter<ASN1_BIT_STRING_free>> bits(
      ASN1_BIT_STRING_new());
  if (!bits) {
    return openssl_error("cannot allocate keyUsage");
  }
  for (int n = 0; n <= 8; ++n) {
    const unsigned flag = n < 8 ? (0x80u >> n) : 0x8000u;
    if ((flags & flag) != 0 && ASN1_BIT_STRING_set_bit(bits.get(), n, 1) != 1) {
      return openssl_error("cannot set keyUsage bit");
    }
  }
  // X509-SVID.md §4.3: keyUsage is critical on leaves and signing certificates alike.
  if (X509_add1_ext_i2d(cert, NID_key_usage, bits.get(), 1, X509V3_ADD_REPLACE) != 1) {
    return openssl_error("cannot add keyUsage");
  }
  return {};
}

Status add_basic_constraints(X509* cert, bool is_ca) {
  std::unique_ptr<BASIC_CONSTRAINTS, base::OpenSslDeleter<BASIC_CONSTRAINTS_free>> bc(
      BASIC_CONSTRAINTS_new());
  if (!bc) {
    return openssl_error("cannot allocate basicConstraints");
  }
  bc->ca = is_ca ? 0xff : 0;
  if (X509_add1_ext_i2d(cert, NID_basic_constraints, bc.get(), 1, X509V3_ADD_REPLACE) != 1) {
    return openssl_error("cannot add basicConstraints");
  }
  return {};
}

Status push_name(GENERAL_NAMES* names, int type, const std::string& value) {
  GENERAL_NAME* name = GENERAL_NAME_new();
  ASN1_IA5STRING* text = ASN1_IA5STRING_new();
  if (name == nullptr || text == nullptr ||
      ASN1_STRING_set(text, value.data(), static_cast<int>(value.size())) != 1) {
    GENERAL_NAME_free(name);
    ASN1_IA5STRING_free(text);
    return openssl_error("cannot build subjectAltName");
  }
  GENERAL_NAME_set0_value(name, type, text);
  if (sk_GENERAL_NAME_push(names, name) <= 0) {
    GENERAL_NAME_free(name);
    return openssl_error("cannot build subjectAltName");
  }
  return {};
}

// Names are built as GENERAL_NAMEs rather than through the config-string parser so that tests
// can put arbitrary (even invalid) text into a URI SAN.
Status add_subject_alt_names(X509* cert, const CertSpec& spec) {
  if (spec.uri_sans.empty() && spec.dns_sans.empty()) {
    return {};
  }
  base::GeneralNamesPtr names(sk_GENERAL_NAME_new_null());
  if (!names) {
    return openssl_error("cannot allocate subjectAltName");
  }
  for (const auto& uri : spec.uri_sans) {
    if (auto st = push_name(names.get(), GEN_URI, uri); !st.ok()) {
      return st;
    }
  }
  for (const auto& dns : spec.dns_sans) {
    if (auto st = push_name(names.get(), GEN_DNS, dns); !st.ok()) {
      return st;
    }
  }
  // RFC 5280 §4.2.1.6: with an empty subject the SAN extension must be critical.
  const int critical = spec.common_name.empty() ? 1 : 0;
  if (X509_add1_ext_i2d(cert, NID_subject_alt_name, names.get(), critical,
                        X509V3_ADD_REPLACE) != 1) {
    return openssl_error("cannot add subjectAltName");
  }
  return {};
}

Status add_server_and_client_eku(X509* cert) {
  std::unique_ptr<EXTENDED_KEY_USAGE, base::OpenSslDeleter<EXTENDED_KEY_USAGE_free>> eku(
      sk_ASN1_OBJECT_new_null());
  if (!eku || sk_ASN1_OBJECT_push(eku.get(), OBJ_nid2obj(NID_server_auth)) <= 0 ||
      sk_ASN1_OBJECT_push(eku.get(), OBJ_nid2obj(NID_client_auth)) <= 0) {
    return openssl_error("cannot build extendedKeyUsage");
  }
  if (X509_add1_ext_i2d(cert, NID_ext_key_usage, eku.get(), 0, X509V3_ADD_REPLACE) != 1) {
    return openssl_error("cannot add extendedKeyUsage");
  }
  return {};
}

// SKI from the subject key, AKI from the issuer's SKI, so chain building can tell apart CAs that
// share a name (two roots of one trust domain during rotation, for example).
Status add_key_identifiers(X509* cert, X509* issuer_cert) {
  X509V3_CTX ctx;
  X509V3_set_ctx(&ctx, issuer_cert, cert, nullptr, nullptr, 0);
  for (const auto& [nid, value] : {std::pair{NID_subject_key_identifier, "hash"},
                                   std::pair{NID_authority_key_identifier, "keyid:always"}}) {
    std::unique_ptr<X509_EXTENSION, base::OpenSslDeleter<X509_EXTENSION_free>> ext(
        X509V3_EXT_conf_nid(nullptr, &ctx, nid, value));
    if (!ext || X509_add_ext(cert, ext.get(), -1) != 1) {
      return openssl_error(std::string("cannot add ") + OBJ_nid2sn(nid));
    }
  }
  return {};
}

Status set_validity(X509* cert, std::chrono::seconds not_before_offset,
                    std::chrono::seconds lifetime) {
  time_t now = std::time(nullptr);
  // lifetime runs from notBefore, so a negative offset with a short lifetime mints an expired
  // certificate and a positive offset a not-yet-valid one.
  const long before = static_cast<long>(not_before_offset.count());
  const long after = before + static_cast<long>(lifetime.count());
  if (X509_time_adj_ex(X509_getm_notBefore(cert), 0, before, &now) == nullptr ||
      X509_time_adj_ex(X509_getm_notAfter(cert), 0, after, &now) == nullptr) {
    return openssl_error("cannot set certificate validity");
  }
  return {};
}

// Builds and signs one certificate. `issuer_cert` null means self-signed by `subject_key`.
Result<base::X509Ptr> build_certificate(const CertSpec& spec, EVP_PKEY* subject_key,
                                        X509* issuer_cert, EVP_PKEY* issuer_key) {
  if (spec.common_name.size() > kMaxCommonNameBytes) {
    return Error{"common name \"" + spec.common_name + "\" is longer than 64 bytes"};
  }
  base::X509Ptr cert(X509_new());
  if (!cert || X509_set_version(cert.get(), X509_VERSION_3) != 1) {
    return openssl_error("cannot allocate a certificate");
  }
  if (auto st = set_random_serial(cert.get()); !st.ok()) {
    return st.error();
  }
  X509_NAME* subject = X509_get_subject_name(cert.get());
  if (!spec.common_name.empty() &&
      X509_NAME_add_entry_by_NID(subject, NID_commonName, MBSTRING_UTF8,
                                 reinterpret_cast<const unsigned char*>(spec.common_name.data()),
                                 static_cast<int>(spec.common_name.size()), -1, 0) != 1) {
    return openssl_error("cannot set subject common name");
  }
  X509* issuer = issuer_cert != nullptr ? issuer_cert : cert.get();
  if (X509_set_issuer_name(cert.get(), X509_get_subject_name(issuer)) != 1 ||
      X509_set_pubkey(cert.get(), subject_key) != 1) {
    return openssl_error("cannot set issuer or public key");
  }
  if (auto st = set_validity(cert.get(), spec.not_before_offset, spec.lifetime); !st.ok()) {
    return st.error();
  }
  if (auto st = add_basic_constraints(cert.get(), spec.is_ca); !st.ok()) {
    return st.error();
  }
  const unsigned default_usage = spec.is_ca ? (X509v3_KU_KEY_CERT_SIGN | X509v3_KU_CRL_SIGN)
                                            : X509v3_KU_DIGITAL_SIGNATURE;
  const unsigned usage = spec.key_usage.value_or(default_usage);
  if (usage != 0) {
    if (auto st = add_key_usage(cert.get(), usage); !st.ok()) {
      return st.error();
    }
  }
  if (!spec.is_ca && spec.server_and_client_eku) {
    if (auto st = add_server_and_client_eku(cert.get()); !st.ok()) {
      return st.error();
    }
  }
  if (auto st = add_subject_alt_names(cert.get(), spec); !st.ok()) {
    return st.error();
  }
  if (auto st = add_key_identifiers(cert.get(), issuer); !st.ok()) {
    return st.error();
  }
  if (X509_sign(cert.get(), issuer_key, EVP_sha256()) <= 0) {
    return openssl_error("cannot sign certificate");
  }
  return cert;
}

// Seconds from now until `cert` expires (0 if already expired).
std::chrono::seconds remaining_lifetime(const X509* cert) {
  int days = 0;
  int secs = 0;
  if (ASN1_TIME_diff(&days, &secs, nullptr, X509_get0_notAfter(cert)) != 1) {
    return std::chrono::seconds(0);
  }
  const long long total = static_cast<long long>(days) * 86400 + secs;
  return std::chrono::seconds(total > 0 ? total : 0);
}

}  // namespace

Result<base::EvpPkeyPtr> generate_ec_p256_key() {
  base::EvpPkeyPtr key(EVP_EC_gen("P-256"));
  if (!key) {
    return openssl_error("cannot generate an EC P-256 key");
  }
  return key;
}

Result<Issuer> Issuer::create_root(const TrustDomain& td, std::chrono::seconds lifetime) {
  auto key = generate_ec_p256_key();
  if (!key.ok()) {
    return key.error();
  }
  CertSpec spec;
  spec.uri_sans = {td.id_string()};
  spec.common_name = td.name().substr(0, kMaxCommonNameBytes);
  spec.is_ca = true;
  spec.lifetime = lifetime;
  auto cert = build_certificate(spec, key->get(), nullptr, key->get());
  if (!cert.ok()) {
    return cert.error().wrap("root CA for trust domain \"" + td.name() + "\"");
  }
  Issuer issuer;
  issuer.cert_ = std::move(*cert);
  issuer.key_ = std::move(*key);
  return issuer;
}

Result<Issuer> Issuer::create_intermediate(std::optional<TrustDomain> td) const {
  auto key = generate_ec_p256_key();
  if (!key.ok()) {
    return key.error();
  }
  // The intermediate inherits its trust domain from this CA's URI SAN unless told otherwise.
  std::string td_id;
  if (td) {
    td_id = td->id_string();
  } else if (auto own = spiffe_id_of(cert_.get()); own.ok()) {
    td_id = own->trust_domain().id_string();
  }
  CertSpec spec;
  if (!td_id.empty()) {
    spec.uri_sans = {td_id};
  }
  spec.common_name = "intermediate CA";
  spec.is_ca = true;
  // It ends with its issuer, so a chain never outlives its root; notBefore is backdated 60s.
  // One second less: the remaining lifetime is read now and the validity set a moment later, and
  // a clock tick in between would otherwise push notAfter one second past the issuer's.
  spec.lifetime =
      remaining_lifetime(cert_.get()) - spec.not_before_offset - std::chrono::seconds(1);
  auto cert = issue(spec, key->get());
  if (!cert.ok()) {
    return cert.error().wrap("intermediate CA");
  }
  Issuer issuer;
  issuer.cert_ = std::move(*cert);
  issuer.key_ = std::move(*key);
  issuer.chain_.push_back(base::share(issuer.cert_.get()));
  for (const auto& c : chain_) {
    issuer.chain_.push_back(base::share(c.get()));
  }
  return issuer;
}

Result<base::X509Ptr> Issuer::issue(const CertSpec& spec, EVP_PKEY* subject_key) const {
  return build_certificate(spec, subject_key, cert_.get(), key_.get());
}

Result<X509Svid> Issuer::issue_svid(const SpiffeId& id, CertSpec spec) const {
  auto key = generate_ec_p256_key();
  if (!key.ok()) {
    return key.error();
  }
  if (spec.uri_sans.empty()) {
    spec.uri_sans = {id.str()};
  }
  auto leaf = issue(spec, key->get());
  if (!leaf.ok()) {
    return leaf.error().wrap("X.509-SVID for " + id.str());
  }
  // No check_own_svid here: tests mint deliberately defective SVIDs with this.
  X509Svid svid{id, {}, std::move(*key), ""};
  svid.chain.push_back(std::move(*leaf));
  for (const auto& c : chain_) {
    svid.chain.push_back(base::share(c.get()));
  }
  return svid;
}

std::string certificate_to_pem(const X509* cert) {
  base::BioPtr bio(BIO_new(BIO_s_mem()));
  if (!bio || PEM_write_bio_X509(bio.get(), cert) != 1) {
    ERR_clear_error();
    return "";
  }
  char* data = nullptr;
  const long len = BIO_get_mem_data(bio.get(), &data);
  return std::string(data, static_cast<size_t>(len));
}

std::string private_key_to_pem(EVP_PKEY* key) {
  base::BioPtr bio(BIO_new(BIO_s_mem()));
  if (!bio ||
      PEM_write_bio_PKCS8PrivateKey(bio.get(), key, nullptr, nullptr, 0, nullptr, nullptr) != 1) {
    ERR_clear_error();
    return "";
  }
  char* data = nullptr;
  const long len = BIO_get_mem_data(bio.get(), &data);
  return std::string(data, static_cast<size_t>(len));
}

}  // namespace spiffe_tunnel::spiffe
