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
  kChainInvalid,      // does not chain to the trust domain's roots, bad signature, ...
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

// `leaf` is the peer's end-entity certificate; `intermediates` the rest of what it sent (may be
// null). `now` is the verification time.
PeerVerification verify_peer_chain(X509* leaf, STACK_OF(X509) * intermediates,
                                   const BundleSet& bundles,
                                   std::chrono::system_clock::time_point now);

}  // namespace spiffe_tunnel::spiffe
