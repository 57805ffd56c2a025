#pragma once
// Bundle: the X.509 authorities (root CAs) of one trust domain. BundleSet: bundles keyed by trust
// domain, the unit in which trust is decided -- a peer is only ever verified against the bundle
// of its own trust domain, never against a pool. Both are immutable once built and shared across
// threads as shared_ptr<const ...>.

#include <map>
#include <memory>
#include <string_view>
#include <vector>

#include "spiffe_tunnel/base/openssl.h"
#include "spiffe_tunnel/base/result.h"
#include "spiffe_tunnel/spiffe/spiffe_id.h"

namespace spiffe_tunnel::spiffe {

class Bundle {
 public:
  // From concatenated DER certificates (Workload API). Zero bytes gives an empty bundle, which
  // trusts nothing (all keys of that trust domain revoked).
  static base::Result<Bundle> from_der(TrustDomain td, std::string_view der);
  // From PEM text with one or more CERTIFICATE blocks.
  static base::Result<Bundle> from_pem(TrustDomain td, std::string_view pem);
  // From a SPIFFE bundle (JWK Set JSON): keys with use "x509-svid" contribute the first x5c
  // element; other keys are ignored; "keys" must be present.
  static base::Result<Bundle> from_jwks(TrustDomain td, std::string_view json);
  // Detects the format: JSON object → from_jwks, "-----BEGIN" → from_pem, else from_der.
  static base::Result<Bundle> parse(TrustDomain td, std::string_view data);

  Bundle(TrustDomain td, std::vector<base::X509Ptr> authorities);
  Bundle(Bundle&&) = default;
  Bundle& operator=(Bundle&&) = default;

  const TrustDomain& trust_domain() const { return td_; }
  const std::vector<base::X509Ptr>& authorities() const { return authorities_; }
  // An X509_STORE holding exactly this bundle's authorities, built once at construction.
  X509_STORE* store() const { return store_.get(); }
  // True when both hold the same certificates in the same order.
  bool same_authorities(const Bundle& other) const;

 private:
  TrustDomain td_;
  std::vector<base::X509Ptr> authorities_;
  base::X509StorePtr store_;
};

class BundleSet {
 public:
  // Adds or replaces the bundle of its trust domain.
  void put(std::shared_ptr<const Bundle> bundle);
  // Returns the bundle of `td`, or nullptr if none is held.
  const Bundle* find(const TrustDomain& td) const;
  std::vector<TrustDomain> trust_domains() const;
  size_t size() const { return bundles_.size(); }

 private:
  std::map<TrustDomain, std::shared_ptr<const Bundle>> bundles_;
};

}  // namespace spiffe_tunnel::spiffe
