#pragma once
// Small helpers shared by the spiffe module tests: parse-or-fail constructors for IDs and trust
// domains, and throwaway PKIs built with Issuer. Every helper fails the running test (REQUIRE)
// instead of returning an error.

#include <chrono>
#include <initializer_list>
#include <memory>
#include <string>
#include <vector>

#include <openssl/x509.h>
#include <catch2/catch.hpp>

#include "spiffe_tunnel/base/openssl.h"
#include "spiffe_tunnel/spiffe/bundle.h"
#include "spiffe_tunnel/spiffe/issuer.h"
#include "spiffe_tunnel/spiffe/spiffe_id.h"
#include "spiffe_tunnel/spiffe/x509_svid.h"

namespace spiffe_tunnel::spiffe::testing {

inline TrustDomain td_of(std::string_view text) {
  auto td = TrustDomain::parse(text);
  INFO(text);
  REQUIRE(td.ok());
  return *td;
}

inline SpiffeId id_of(std::string_view text) {
  auto id = SpiffeId::parse(text);
  INFO(text);
  REQUIRE(id.ok());
  return *id;
}

inline Issuer make_root(std::string_view td) {
  auto root = Issuer::create_root(td_of(td));
  INFO((root.ok() ? "" : root.error().message));
  REQUIRE(root.ok());
  return std::move(*root);
}

inline Issuer make_intermediate(const Issuer& parent) {
  auto ca = parent.create_intermediate();
  INFO((ca.ok() ? "" : ca.error().message));
  REQUIRE(ca.ok());
  return std::move(*ca);
}

inline X509Svid make_svid(const Issuer& issuer, std::string_view id, CertSpec spec = {}) {
  auto svid = issuer.issue_svid(id_of(id), std::move(spec));
  INFO((svid.ok() ? "" : svid.error().message));
  REQUIRE(svid.ok());
  return std::move(*svid);
}

inline std::string der_of(const X509* cert) {
  unsigned char* buf = nullptr;
  const int len = i2d_X509(cert, &buf);
  REQUIRE(len > 0);
  std::string out(reinterpret_cast<char*>(buf), static_cast<size_t>(len));
  OPENSSL_free(buf);
  return out;
}

inline std::string pkcs8_der_of(EVP_PKEY* key) {
  std::unique_ptr<PKCS8_PRIV_KEY_INFO, base::OpenSslDeleter<PKCS8_PRIV_KEY_INFO_free>> info(
      EVP_PKEY2PKCS8(key));
  REQUIRE(info);
  unsigned char* buf = nullptr;
  const int len = i2d_PKCS8_PRIV_KEY_INFO(info.get(), &buf);
  REQUIRE(len > 0);
  std::string out(reinterpret_cast<char*>(buf), static_cast<size_t>(len));
  OPENSSL_clear_free(buf, static_cast<size_t>(len));
  return out;
}

// Concatenated DER of every certificate in `chain` (the Workload API "DER bundle bytes").
inline std::string der_of(const std::vector<base::X509Ptr>& chain) {
  std::string out;
  for (const auto& cert : chain) {
    out += der_of(cert.get());
  }
  return out;
}

inline std::shared_ptr<const Bundle> bundle_of(const Issuer& root) {
  std::vector<base::X509Ptr> certs;
  certs.push_back(base::share(root.certificate()));
  auto td = spiffe_id_of(root.certificate());
  REQUIRE(td.ok());
  return std::make_shared<const Bundle>(td->trust_domain(), std::move(certs));
}

inline BundleSet bundle_set_of(std::initializer_list<const Issuer*> roots) {
  BundleSet set;
  for (const Issuer* root : roots) {
    set.put(bundle_of(*root));
  }
  return set;
}

// The certificates after the leaf, as a TLS stack would present them.
inline base::X509StackPtr intermediates_of(const X509Svid& svid) {
  base::X509StackPtr stack(sk_X509_new_null());
  for (size_t i = 1; i < svid.chain.size(); ++i) {
    X509_up_ref(svid.chain[i].get());
    sk_X509_push(stack.get(), svid.chain[i].get());
  }
  return stack;
}

// Re-signs `cert` after a test edited it, keeping the issuer name and key identifiers.
inline void resign(X509* cert, EVP_PKEY* key) {
  REQUIRE(X509_sign(cert, key, EVP_sha256()) > 0);
}

}  // namespace spiffe_tunnel::spiffe::testing
