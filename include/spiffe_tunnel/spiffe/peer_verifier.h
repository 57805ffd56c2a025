#pragma once
// Verifies a peer's X.509-SVID chain the SPIFFE way: read the leaf's SPIFFE ID, pick the bundle of
// *that* trust domain, build and check the chain against only that bundle's roots (RFC 5280 path
// validation at the given time, intermediates from the peer), then apply the X509-SVID leaf
// rules. Pure function of its inputs; any thread may call it.

#include <chrono>
#include <optional>
#include <string>
#include <string_view>

#include "spiffe_tunnel/base/openssl.h"
#include "spiffe_tunnel/spiffe/bundle.h"
#include "spiffe_tunnel/spiffe/spiffe_id.h"

namespace spiffe_tunnel::spiffe {

// Why a peer was refused. The label form is used in metrics and is public interface.
enum class Rejection {
  kNone,
  kNoCertificate,     // peer sent no certificate
  kNotSvid,           // no/many URI SANs, or not a valid SPIFFE ID, or root-only ID
  kUntrustedDomain,   // no bundle held for the peer's trust domain
  kExpired,           // a certificate is expired or not yet valid
  kChainInvalid,      // does not chain to the trust domain's roots, bad signature, a key or
                      // digest below the security level, an intermediate with a foreign URI SAN
  kLeafRules,         // leaf is a CA, lacks digitalSignature, has keyCertSign/cRLSign, bad EKU
  kNotAuthorized,     // verified, but the tunnel's policy does not allow this ID
};
std::string_view rejection_label(Rejection r);

struct PeerVerification {
  Rejection rejection = Rejection::kNone;
  std::optional<SpiffeId> id;  // set whenever the leaf carried a valid SPIFFE ID
  std::string detail;          // one sentence for logs, "" when accepted

  bool ok() const { return rejection == Rejection::kNone; }
};

// The OpenSSL verification parameters the SPIFFE verifier applies, as a plain value: the TLS layer
// takes them from the handshake's SSL, and a later re-check of a live session (which no longer
// has its SSL) passes the same value again. The purpose (sslclient/sslserver) is deliberately not
// carried: check_leaf_rules applies the SPIFFE EKU rule for both roles.
struct VerifyParams {
  // OpenSSL security level (SSL_get_security_level). At 2, the Debian default, every certificate
  // key must give 112 bits of security (RSA/DSA >= 2048 bits, EC >= 224 bits) and every signature
  // except the trust anchor's own must use a digest of that strength (no SHA-1, no MD5).
  int security_level = 2;
  int max_depth = -1;        // longest chain; -1 keeps OpenSSL's default (100)
  unsigned long flags = 0;   // further X509_V_FLAG_* set on the SSL (e.g. X509_V_FLAG_X509_STRICT)

  // The parameters of an OpenSSL verification context, e.g. the one the TLS stack hands its
  // verify callback (X509_STORE_CTX_get0_param). An auth level of -1 (unset) keeps the default.
  static VerifyParams from(const X509_VERIFY_PARAM* param);
};

// `leaf` is the peer's end-entity certificate; `intermediates` the rest of what it sent (may be
// null). `now` is the verification time; `params` the security level and flags to verify with.
PeerVerification verify_peer_chain(X509* leaf, STACK_OF(X509) * intermediates,
                                   const BundleSet& bundles,
                                   std::chrono::system_clock::time_point now,
                                   const VerifyParams& params = {});

}  // namespace spiffe_tunnel::spiffe
