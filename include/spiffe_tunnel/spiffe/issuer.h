#pragma once
// Issuer: a minimal X.509 certificate authority for throwaway trust domains. It mints root and
// intermediate CAs and X.509-SVIDs with EC P-256 keys. `spiffe-tunnel demo` uses it to make its
// trust domains, and tests use its knobs to mint deliberately defective certificates (a CA leaf,
// two URI SANs, expired, ...). Not a production CA. An Issuer is not thread-safe.

#include <chrono>
#include <optional>
#include <string>
#include <vector>

#include "spiffe_tunnel/base/openssl.h"
#include "spiffe_tunnel/base/result.h"
#include "spiffe_tunnel/spiffe/spiffe_id.h"
#include "spiffe_tunnel/spiffe/x509_svid.h"

namespace spiffe_tunnel::spiffe {

// What to put in a certificate. Defaults produce a valid leaf X.509-SVID.
struct CertSpec {
  std::vector<std::string> uri_sans;      // e.g. {"spiffe://td/workload"}
  std::vector<std::string> dns_sans;
  std::string common_name;                // "" → no subject CN
  bool is_ca = false;                     // basicConstraints cA
  // keyUsage bits (X509v3_KU_*); nullopt → digitalSignature for leaves,
  // keyCertSign|cRLSign for CAs. 0 → no keyUsage extension at all.
  std::optional<unsigned> key_usage;
  bool server_and_client_eku = true;      // extendedKeyUsage serverAuth+clientAuth (leaves only)
  std::chrono::seconds not_before_offset{-60};  // relative to now
  std::chrono::seconds lifetime{3600};
};

class Issuer {
 public:
  // A self-signed root CA whose URI SAN is spiffe://<td>.
  static base::Result<Issuer> create_root(const TrustDomain& td,
                                          std::chrono::seconds lifetime = std::chrono::hours(24));

  // A CA signed by this one (same trust domain unless `td` given).
  base::Result<Issuer> create_intermediate(std::optional<TrustDomain> td = std::nullopt) const;

  // Signs `spec` for `subject_key`.
  base::Result<base::X509Ptr> issue(const CertSpec& spec, EVP_PKEY* subject_key) const;

  // A fresh key pair and leaf for `id`, with this issuer's chain up to (excluding) the root.
  base::Result<X509Svid> issue_svid(const SpiffeId& id, CertSpec spec = {}) const;

  X509* certificate() const { return cert_.get(); }
  EVP_PKEY* key() const { return key_.get(); }
  // Certificates between this issuer and the root, this issuer first; empty for a root.
  const std::vector<base::X509Ptr>& chain_to_root() const { return chain_; }

 private:
  Issuer() = default;
  base::X509Ptr cert_;
  base::EvpPkeyPtr key_;
  std::vector<base::X509Ptr> chain_;
};

base::Result<base::EvpPkeyPtr> generate_ec_p256_key();
std::string certificate_to_pem(const X509* cert);
std::string private_key_to_pem(EVP_PKEY* key);  // PKCS#8

}  // namespace spiffe_tunnel::spiffe
