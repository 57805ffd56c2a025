#pragma once
// VerifiedChain: the peer's certificate chain exactly as the handshake verified it (the leaf and
// the intermediates the peer sent, kept as DER: an idle session holds about 1 KiB per certificate
// instead of the several KiB of a parsed X509) plus the verification parameters taken
// from the SSL object, so that the same verifier can run over it again after the SSL object is
// gone: on every identity snapshot change, against the bundle of the peer's trust domain that
// is current then. Immutable once captured; shared across threads as shared_ptr<const ...>.

#include <chrono>
#include <memory>
#include <string>
#include <vector>

#include "spiffe_tunnel/base/openssl.h"
#include "spiffe_tunnel/spiffe/bundle.h"
#include "spiffe_tunnel/spiffe/peer_verifier.h"

namespace spiffe_tunnel::tls {

class VerifiedChain {
 public:
  // Takes references to `leaf` and `intermediates` (may be null) as the handshake verified them
  // against `bundles`. `params` are those the handshake verified with (the SSL's security level,
  // depth and flags: PeerOutcome::verify_params).
  static std::shared_ptr<const VerifiedChain> capture(X509* leaf, STACK_OF(X509) * intermediates,
                                                      const spiffe::VerifyParams& params,
                                                      const spiffe::BundleSet& bundles);

  // Runs the handshake's verifier over the kept chain against `bundles` at `now` (parsing the DER
  // again: this runs on identity changes only). A chain that no longer parses fails closed.
  spiffe::PeerVerification verify(const spiffe::BundleSet& bundles,
                                  std::chrono::system_clock::time_point now) const;

  // The earliest notAfter of the chain: the leaf, the intermediates, and the trust anchor of the
  // bundle the handshake used that issued the top of the chain. The chain stops verifying then.
  std::chrono::system_clock::time_point not_after() const { return not_after_; }
  const spiffe::VerifyParams& params() const { return params_; }
  // The chain as DER, leaf first (what a session ticket carries).
  const std::vector<std::string>& der() const { return der_; }

 private:
  VerifiedChain() = default;

  std::vector<std::string> der_;  // leaf first, then the intermediates as the peer sent them
  spiffe::VerifyParams params_;
  std::chrono::system_clock::time_point not_after_;
};

// The notAfter of `cert` (the epoch when unreadable, so that it counts as expired).
std::chrono::system_clock::time_point not_after_of(const X509* cert);

}  // namespace spiffe_tunnel::tls
