#include "spiffe_tunnel/spiffe/x509_svid.h"

#include <climits>
#include <ctime>
#include <string>

#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/x509v3.h>

#include "spiffe/describe.h"

namespace spiffe_tunnel::spiffe {
namespace {

using base::Error;
using base::Result;
using base::Status;

// keyUsage bit positions in the BIT STRING (RFC 5280 §4.2.1.3).
constexpr int kDigitalSignatureBit = 0;
constexpr int kKeyCertSignBit = 5;
constexpr int kCrlSignBit = 6;

// One decoded extension. `value` is null both when the extension is absent and when it is
// malformed; `error` tells the two apart.
template <typename T, void (*Free)(T*)>
struct DecodedExtension {
  std::unique_ptr<T, base::OpenSslDeleter<Free>> value;
  std::string error;  // "" unless present but unusable
  bool present() const { return value != nullptr; }
};

template <typename T, void (*Free)(T*)>
DecodedExtension<T, Free> decode_extension(const X509* cert, int nid, const char* name) {
  int crit = -1;
  DecodedExtension<T, Free> out;
  out.value.reset(static_cast<T*>(X509_get_ext_d2i(cert, nid, &crit, nullptr)));
  // -1: absent; -2: present more than once, which RFC 5280 §4.2 forbids; >= 0 with a null value:
  // present but not decodable. Either of the latter two must not be read as "absent".
  if (crit == -2) {
    out.error = std::string(name) + " extension appears more than once";
  } else if (crit >= 0 && !out.value) {
    out.error = std::string(name) + " extension is malformed";
  }
  ERR_clear_error();
  return out;
}

using BasicConstraints = DecodedExtension<BASIC_CONSTRAINTS, BASIC_CONSTRAINTS_free>;
using KeyUsage = DecodedExtension<ASN1_BIT_STRING, ASN1_BIT_STRING_free>;
using ExtKeyUsage = DecodedExtension<EXTENDED_KEY_USAGE, EXTENDED_KEY_USAGE_free>;
using SubjectAltNames = DecodedExtension<GENERAL_NAMES, GENERAL_NAMES_free>;

bool has_eku(const EXTENDED_KEY_USAGE* eku, int nid) {
  for (int i = 0; i < sk_ASN1_OBJECT_num(eku); ++i) {
    if (OBJ_obj2nid(sk_ASN1_OBJECT_value(eku, i)) == nid) {
      return true;
    }
  }
  return false;
}

// The URI SANs of a decoded subjectAltName extension, in order.
std::vector<std::string_view> uris_of(const SubjectAltNames& sans) {
  std::vector<std::string_view> out;
  for (int i = 0; sans.present() && i < sk_GENERAL_NAME_num(sans.value.get()); ++i) {
    const GENERAL_NAME* name = sk_GENERAL_NAME_value(sans.value.get(), i);
    if (name->type == GEN_URI) {
      const ASN1_IA5STRING* uri = name->d.uniformResourceIdentifier;
      out.emplace_back(reinterpret_cast<const char*>(ASN1_STRING_get0_data(uri)),
                       static_cast<size_t>(ASN1_STRING_length(uri)));
    }
  }
  return out;
}

Error cert_error(const X509* cert, const std::string& reason) {
  return Error{"certificate " + describe(cert) + " " + reason};
}

std::string openssl_reason(std::string_view fallback) {
  std::string errors = base::drain_openssl_errors();
  return errors.empty() ? std::string(fallback) : errors;
}

// PEM_read_bio_PrivateKey would prompt on the terminal for an encrypted key; refuse instead.
int refuse_passphrase(char*, int, int, void*) {
  return -1;
}

Result<base::EvpPkeyPtr> parse_pkcs8_der_key(std::string_view der) {
  if (der.size() > LONG_MAX) {
    return Error{"private key is too large"};
  }
  const auto* p = reinterpret_cast<const unsigned char*>(der.data());
  const unsigned char* end = p + der.size();
  std::unique_ptr<PKCS8_PRIV_KEY_INFO, base::OpenSslDeleter<PKCS8_PRIV_KEY_INFO_free>> info(
      d2i_PKCS8_PRIV_KEY_INFO(nullptr, &p, static_cast<long>(der.size())));
  if (!info) {
    return Error{"private key is not PKCS#8 DER: " + openssl_reason("parse failed")};
  }
  if (p != end) {
    return Error{"private key has " + std::to_string(end - p) + " trailing bytes after PKCS#8 DER"};
  }
  base::EvpPkeyPtr key(EVP_PKCS82PKEY(info.get()));
  if (!key) {
    return Error{"private key is not usable: " + openssl_reason("unsupported key type")};
  }
  return key;
}

Result<base::EvpPkeyPtr> parse_pem_key(std::string_view pem) {
  base::BioPtr bio(BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size())));
  if (!bio || pem.size() > INT_MAX) {
    return Error{"private key PEM is too large"};
  }
  base::EvpPkeyPtr key(PEM_read_bio_PrivateKey(bio.get(), nullptr, refuse_passphrase, nullptr));
  if (!key) {
    return Error{"no usable private key in PEM (encrypted keys are not supported): " +
                 openssl_reason("no PRIVATE KEY block")};
  }
  return key;
}

Result<X509Svid> checked_svid(std::vector<base::X509Ptr> chain, base::EvpPkeyPtr key,
                              std::string hint) {
  if (chain.empty()) {
    return Error{"X.509-SVID has no certificates"};
  }
  auto id = check_leaf_rules(chain.front().get());
  if (!id.ok()) {
    return id.error().wrap("X.509-SVID leaf");
  }
  X509Svid svid{std::move(*id), std::move(chain), std::move(key), std::move(hint)};
  if (auto st = check_own_svid(svid); !st.ok()) {
    return st.error();
  }
  return svid;
}

}  // namespace

std::chrono::system_clock::time_point X509Svid::not_after() const {
  std::tm tm{};
  if (ASN1_TIME_to_tm(X509_get0_notAfter(leaf()), &tm) != 1) {
    // An unreadable notAfter counts as already expired, so callers renew rather than trust it.
    return std::chrono::system_clock::time_point{};
  }
  return std::chrono::system_clock::from_time_t(timegm(&tm));
}

Result<X509Svid> X509Svid::from_der(std::string_view certs_der, std::string_view key_der,
                                    std::string hint) {
  auto chain = parse_der_certificates(certs_der);
  if (!chain.ok()) {
    return chain.error().wrap("X.509-SVID");
  }
  auto key = parse_pkcs8_der_key(key_der);
  if (!key.ok()) {
    return key.error().wrap("X.509-SVID");
  }
  return checked_svid(std::move(*chain), std::move(*key), std::move(hint));
}

Result<X509Svid> X509Svid::from_pem(std::string_view certs_pem, std::string_view key_pem) {
  auto chain = parse_pem_certificates(certs_pem);
  if (!chain.ok()) {
    return chain.error().wrap("X.509-SVID");
  }
  auto key = parse_pem_key(key_pem);
  if (!key.ok()) {
    return key.error().wrap("X.509-SVID");
  }
  return checked_svid(std::move(*chain), std::move(*key), "");
}

Result<SpiffeId> spiffe_id_of(const X509* cert) {
  SubjectAltNames sans =
      decode_extension<GENERAL_NAMES, GENERAL_NAMES_free>(cert, NID_subject_alt_name,
                                                          "subjectAltName");
  if (!sans.error.empty()) {
    return cert_error(cert, "is not an X.509-SVID: " + sans.error);
  }
  if (!sans.present()) {
    return cert_error(cert, "is not an X.509-SVID: it has no subjectAltName extension");
  }
  // X509-SVID.md §2: exactly one URI SAN; more than one is rejected even if they are equal.
  const std::vector<std::string_view> uris = uris_of(sans);
  if (uris.empty()) {
    return cert_error(cert, "is not an X.509-SVID: it has no URI subjectAltName");
  }
  if (uris.size() > 1) {
    return cert_error(cert, "is not an X.509-SVID: it has " + std::to_string(uris.size()) +
                                " URI subjectAltNames (exactly one allowed)");
  }
  const std::string_view text = uris.front();
  auto id = SpiffeId::parse(text);
  if (!id.ok()) {
    return cert_error(cert, "is not an X.509-SVID: URI subjectAltName " + id.error().message);
  }
  return id;
}

Result<SpiffeId> check_leaf_rules(const X509* leaf) {
  auto id = spiffe_id_of(leaf);
  if (!id.ok()) {
    return id;
  }
  const std::string who = "leaf " + id->str();
  if (id->is_root()) {
    // X509-SVID.md §2: a trust domain ID names the domain, never a workload.
    return Error{who + " has no path; a trust domain ID cannot identify a workload"};
  }

  BasicConstraints bc = decode_extension<BASIC_CONSTRAINTS, BASIC_CONSTRAINTS_free>(
      leaf, NID_basic_constraints, "basicConstraints");
  if (!bc.error.empty()) {
    return Error{who + ": " + bc.error};
  }
  if (bc.present() && bc.value->ca != 0) {
    return Error{who + " is a CA certificate (basicConstraints cA=TRUE); signing certificates "
                       "are never accepted as identities"};
  }

  KeyUsage ku = decode_extension<ASN1_BIT_STRING, ASN1_BIT_STRING_free>(leaf, NID_key_usage,
                                                                        "keyUsage");
  if (!ku.error.empty()) {
    return Error{who + ": " + ku.error};
  }
  if (!ku.present()) {
    return Error{who + " has no keyUsage extension (it must have one with digitalSignature)"};
  }
  if (ASN1_BIT_STRING_get_bit(ku.value.get(), kDigitalSignatureBit) == 0) {
    return Error{who + " keyUsage lacks digitalSignature"};
  }
  if (ASN1_BIT_STRING_get_bit(ku.value.get(), kKeyCertSignBit) != 0) {
    return Error{who + " keyUsage has keyCertSign, which only signing certificates may have"};
  }
  if (ASN1_BIT_STRING_get_bit(ku.value.get(), kCrlSignBit) != 0) {
    return Error{who + " keyUsage has cRLSign, which only signing certificates may have"};
  }

  // EKU is optional, but when present it must allow both TLS roles: the tunnel is client on one
  // side and server on the other, and X509-SVID.md §4.4 requires both.
  ExtKeyUsage eku = decode_extension<EXTENDED_KEY_USAGE, EXTENDED_KEY_USAGE_free>(
      leaf, NID_ext_key_usage, "extendedKeyUsage");
  if (!eku.error.empty()) {
    return Error{who + ": " + eku.error};
  }
  if (eku.present()) {
    const bool server = has_eku(eku.value.get(), NID_server_auth);
    const bool client = has_eku(eku.value.get(), NID_client_auth);
    if (!server || !client) {
      return Error{who + " extendedKeyUsage lacks " +
                   (server ? "clientAuth" : client ? "serverAuth" : "serverAuth and clientAuth")};
    }
  }
  return id;
}

Status check_signing_rules(const X509* cert) {
  BasicConstraints bc = decode_extension<BASIC_CONSTRAINTS, BASIC_CONSTRAINTS_free>(
      cert, NID_basic_constraints, "basicConstraints");
  if (!bc.error.empty()) {
    return cert_error(cert, "is not a valid signing certificate: " + bc.error);
  }
  if (!bc.present() || bc.value->ca == 0) {
    return cert_error(cert, "is not a signing certificate: basicConstraints cA is not TRUE");
  }
  KeyUsage ku = decode_extension<ASN1_BIT_STRING, ASN1_BIT_STRING_free>(cert, NID_key_usage,
                                                                        "keyUsage");
  if (!ku.error.empty()) {
    return cert_error(cert, "is not a valid signing certificate: " + ku.error);
  }
  // X509-SVID.md §4.3: keyUsage is mandatory on signing certificates, so absence fails too
  // (OpenSSL alone would treat a missing keyUsage as "any usage").
  if (!ku.present() || ASN1_BIT_STRING_get_bit(ku.value.get(), kKeyCertSignBit) == 0) {
    return cert_error(cert, "is not a signing certificate: keyUsage lacks keyCertSign");
  }
  return {};
}

Status check_signing_uri_sans(const X509* cert, const TrustDomain& td) {
  SubjectAltNames sans =
      decode_extension<GENERAL_NAMES, GENERAL_NAMES_free>(cert, NID_subject_alt_name,
                                                          "subjectAltName");
  if (!sans.error.empty()) {
    return cert_error(cert, "is not a valid signing certificate: " + sans.error);
  }
  // X509-SVID.md §4.1 lets a signing certificate name its trust domain (spiffe://td) and nothing
  // else; a CA that carries a workload's or another domain's ID is not a CA of this bundle's.
  const std::string expected = td.id_string();
  for (std::string_view uri : uris_of(sans)) {
    if (uri != expected) {
      return cert_error(cert, "is not a signing certificate of trust domain \"" + td.name() +
                                  "\": it has URI subjectAltName \"" + std::string(uri) +
                                  "\" (only " + expected + " is allowed)");
    }
  }
  return {};
}

Status check_own_svid(const X509Svid& svid) {
  if (svid.chain.empty() || !svid.chain.front()) {
    return Error{"X.509-SVID " + svid.id.str() + " has no certificates"};
  }
  auto id = check_leaf_rules(svid.leaf());
  if (!id.ok()) {
    return id.error().wrap("X.509-SVID " + svid.id.str());
  }
  if (*id != svid.id) {
    return Error{"X.509-SVID " + svid.id.str() + ": leaf certificate names " + id->str()};
  }
  for (size_t i = 1; i < svid.chain.size(); ++i) {
    if (auto st = check_signing_rules(svid.chain[i].get()); !st.ok()) {
      return st.error().wrap("X.509-SVID " + svid.id.str() + " chain element " +
                             std::to_string(i));
    }
  }
  if (!svid.key) {
    return Error{"X.509-SVID " + svid.id.str() + " has no private key"};
  }
  const EVP_PKEY* pub = X509_get0_pubkey(svid.leaf());
  if (pub == nullptr || EVP_PKEY_eq(pub, svid.key.get()) != 1) {
    ERR_clear_error();
    return Error{"X.509-SVID " + svid.id.str() +
                 ": private key does not match the leaf certificate's public key"};
  }
  return {};
}

Result<std::vector<base::X509Ptr>> parse_der_certificates(std::string_view der) {
  std::vector<base::X509Ptr> certs;
  const auto* begin = reinterpret_cast<const unsigned char*>(der.data());
  const unsigned char* p = begin;
  const unsigned char* end = begin + der.size();
  while (p < end) {
    const long remaining = end - p;
    const unsigned char* start = p;
    base::X509Ptr cert(d2i_X509(nullptr, &p, remaining));
    if (!cert || p <= start) {
      return Error{"DER certificate #" + std::to_string(certs.size() + 1) + " at byte " +
                   std::to_string(start - begin) +
                   " is malformed: " + openssl_reason("not an X.509 certificate")};
    }
    certs.push_back(std::move(cert));
  }
  return certs;
}

Result<std::vector<base::X509Ptr>> parse_pem_certificates(std::string_view pem) {
  if (pem.size() > INT_MAX) {
    return Error{"PEM text is too large"};
  }
  base::BioPtr bio(BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size())));
  std::vector<base::X509Ptr> certs;
  int block = 0;
  while (true) {
    char* name = nullptr;
    char* header = nullptr;
    unsigned char* data = nullptr;
    long len = 0;
    if (PEM_read_bio(bio.get(), &name, &header, &data, &len) != 1) {
      const unsigned long err = ERR_peek_last_error();
      // PEM_R_NO_START_LINE is how OpenSSL reports the end of the input.
      if (ERR_GET_LIB(err) == ERR_LIB_PEM && ERR_GET_REASON(err) == PEM_R_NO_START_LINE) {
        ERR_clear_error();
        break;
      }
      return Error{"PEM block #" + std::to_string(block + 1) +
                   " is malformed: " + openssl_reason("bad PEM")};
    }
    ++block;
    const std::string block_name = name;
    const long block_len = len;
    const unsigned char* p = data;
    // Other blocks (a private key next to the chain, say) are skipped, not errors.
    base::X509Ptr cert;
    if (block_name == "CERTIFICATE") {
      cert.reset(d2i_X509(nullptr, &p, block_len));
    }
    const bool trailing = cert && p != data + block_len;
    OPENSSL_free(name);
    OPENSSL_free(header);
    OPENSSL_clear_free(data, static_cast<size_t>(block_len));
    if (block_name != "CERTIFICATE") {
      continue;
    }
    if (!cert || trailing) {
      return Error{"PEM block #" + std::to_string(block) +
                   " (CERTIFICATE) does not hold one DER certificate: " +
                   openssl_reason("trailing data")};
    }
    certs.push_back(std::move(cert));
  }
  if (certs.empty()) {
    return Error{"PEM text holds no CERTIFICATE block"};
  }
  return certs;
}

}  // namespace spiffe_tunnel::spiffe
