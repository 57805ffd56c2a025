#pragma once
// X509Svid: one identity this process may present -- its SPIFFE ID, certificate chain (leaf
// first, then intermediates) and private key. Built once and never modified; shared across
// threads as shared_ptr<const X509Svid>. Private keys stay in memory only.

#include <chrono>
#include <string>
#include <string_view>
#include <vector>

#include "spiffe_tunnel/base/openssl.h"
#include "spiffe_tunnel/base/result.h"
#include "spiffe_tunnel/spiffe/spiffe_id.h"

namespace spiffe_tunnel::spiffe {

struct X509Svid {
  SpiffeId id;
  std::vector<base::X509Ptr> chain;  // leaf first; never empty
  base::EvpPkeyPtr key;
  std::string hint;  // Workload API hint, "" if none

  X509* leaf() const { return chain.front().get(); }
  std::chrono::system_clock::time_point not_after() const;

  // Parses an SVID as the Workload API delivers it: concatenated DER certificates (leaf first)
  // and an unencrypted PKCS#8 DER key. Applies check_own_svid().
  static base::Result<X509Svid> from_der(std::string_view certs_der, std::string_view key_der,
                                         std::string hint = {});
  // Parses PEM certificate chain (leaf first) and PEM private key (PKCS#8 or traditional).
  // Applies check_own_svid().
  static base::Result<X509Svid> from_pem(std::string_view certs_pem, std::string_view key_pem);
};

// Returns the SPIFFE ID in the certificate's single URI SAN. Fails when there is no URI SAN,
// more than one, or it is not a valid SPIFFE ID.
base::Result<SpiffeId> spiffe_id_of(const X509* cert);

// Applies the X509-SVID leaf rules (X509-SVID.md §4, §5.2): exactly one URI SAN holding a SPIFFE
// ID with a non-root path; basicConstraints cA false; keyUsage present with digitalSignature and
// without keyCertSign and cRLSign; if extendedKeyUsage is present it holds serverAuth and
// clientAuth. Returns the leaf's SPIFFE ID. Validity times and signatures are not checked here.
base::Result<SpiffeId> check_leaf_rules(const X509* leaf);

// Applies the signing-certificate rules to an intermediate: cA true and keyCertSign set.
base::Status check_signing_rules(const X509* cert);
// Checks the URI SANs of a signing certificate of trust domain `td`: none, or only `spiffe://td`.
base::Status check_signing_uri_sans(const X509* cert, const TrustDomain& td);

// Sanity checks an SVID of our own before we present it: leaf rules, every further certificate
// is a signing certificate, and the private key matches the leaf public key.
base::Status check_own_svid(const X509Svid& svid);

// Parses consecutive DER certificates ("DER bundle bytes"). Zero bytes gives an empty list.
base::Result<std::vector<base::X509Ptr>> parse_der_certificates(std::string_view der);
// Parses every "CERTIFICATE" block of a PEM text; fails if there is none.
base::Result<std::vector<base::X509Ptr>> parse_pem_certificates(std::string_view pem);

}  // namespace spiffe_tunnel::spiffe
