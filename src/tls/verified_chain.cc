#include "spiffe_tunnel/tls/verified_chain.h"

#include <ctime>

#include "spiffe_tunnel/spiffe/x509_svid.h"

namespace spiffe_tunnel::tls {
namespace {

// The latest notAfter among the bundle's authorities that issued `top`: the chain verifies
// while any one of them is valid.
std::chrono::system_clock::time_point anchor_not_after(X509* top, const spiffe::Bundle* bundle) {
  auto latest = std::chrono::system_clock::time_point::min();
  if (bundle == nullptr) {
    return std::chrono::system_clock::time_point::max();
  }
  for (const auto& authority : bundle->authorities()) {
    if (X509_check_issued(authority.get(), top) == X509_V_OK) {
      latest = std::max(latest, not_after_of(authority.get()));
    }
  }
  return latest == std::chrono::system_clock::time_point::min()
             ? std::chrono::system_clock::time_point::max()
             : latest;
}

}  // namespace

std::chrono::system_clock::time_point not_after_of(const X509* cert) {
  std::tm tm{};
  if (ASN1_TIME_to_tm(X509_get0_notAfter(cert), &tm) != 1) {
    return std::chrono::system_clock::time_point{};
  }
  return std::chrono::system_clock::from_time_t(timegm(&tm));
}

std::shared_ptr<const VerifiedChain> VerifiedChain::capture(X509* leaf,
                                                            STACK_OF(X509) * intermediates,
                                                            const spiffe::VerifyParams& params,
                                                            const spiffe::BundleSet& bundles) {
  auto c = std::shared_ptr<VerifiedChain>(new VerifiedChain());
  c->leaf_ = base::share(leaf);
  c->intermediates_.reset(sk_X509_new_null());
  c->params_ = params;
  c->not_after_ = not_after_of(leaf);
  X509* top = leaf;
  for (int i = 0; intermediates != nullptr && i < sk_X509_num(intermediates); ++i) {
    X509* cert = sk_X509_value(intermediates, i);
    sk_X509_push(c->intermediates_.get(), base::share(cert).release());
    c->not_after_ = std::min(c->not_after_, not_after_of(cert));
    if (X509_check_issued(cert, top) == X509_V_OK) {
      top = cert;  // the peer sends its chain leaf first; the last issuer found is the top
    }
  }
  if (auto id = spiffe::spiffe_id_of(leaf); id.ok()) {
    const spiffe::Bundle* bundle = bundles.find(id->trust_domain());
    c->not_after_ = std::min(c->not_after_, anchor_not_after(top, bundle));
  }
  return c;
}

spiffe::PeerVerification VerifiedChain::verify(const spiffe::BundleSet& bundles,
                                               std::chrono::system_clock::time_point now) const {
  // The same call the handshake's verify callback makes, with the parameters it had.
  return spiffe::verify_peer_chain(leaf_.get(), intermediates_.get(), bundles, now, params_);
}

}  // namespace spiffe_tunnel::tls
