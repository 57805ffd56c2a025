#include "spiffe_tunnel/tls/verified_chain.h"

#include <ctime>
#include <mutex>
#include <unordered_map>

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

namespace {

std::string der_of(X509* cert) {
  const int n = i2d_X509(cert, nullptr);
  if (n <= 0) {
    return {};
  }
  std::string der(static_cast<std::size_t>(n), '\0');
  auto* out = reinterpret_cast<unsigned char*>(der.data());
  i2d_X509(cert, &out);
  return der;
}

// Sessions of one peer present the same chain: they share one VerifiedChain (immutable) instead
// of a copy each. Keyed by the chain's DER, its notAfter and the verification parameters; entries
// of chains no session holds any more are swept as the table grows.
class ChainTable {
 public:
  std::shared_ptr<const VerifiedChain> intern(std::shared_ptr<const VerifiedChain> fresh,
                                              std::string key) {
    std::lock_guard lock(mutex_);
    auto [it, inserted] = table_.try_emplace(std::move(key), fresh);
    if (!inserted) {
      if (auto held = it->second.lock()) {
        return held;
      }
      it->second = fresh;
    }
    if (table_.size() > sweep_at_) {
      std::erase_if(table_, [](const auto& entry) { return entry.second.expired(); });
      sweep_at_ = std::max<std::size_t>(64, 2 * table_.size());
    }
    return fresh;
  }

 private:
  std::mutex mutex_;
  std::unordered_map<std::string, std::weak_ptr<const VerifiedChain>> table_;
  std::size_t sweep_at_ = 64;
};

ChainTable& chain_table() {
  static ChainTable* table = new ChainTable();  // lives as long as any session might
  return *table;
}

base::X509Ptr parse_der(const std::string& der) {
  const auto* in = reinterpret_cast<const unsigned char*>(der.data());
  return base::X509Ptr(d2i_X509(nullptr, &in, static_cast<long>(der.size())));
}

}  // namespace

std::shared_ptr<const VerifiedChain> VerifiedChain::capture(X509* leaf,
                                                            STACK_OF(X509) * intermediates,
                                                            const spiffe::VerifyParams& params,
                                                            const spiffe::BundleSet& bundles) {
  auto c = std::shared_ptr<VerifiedChain>(new VerifiedChain());
  c->params_ = params;
  c->der_.push_back(der_of(leaf));
  c->not_after_ = not_after_of(leaf);
  X509* top = leaf;
  for (int i = 0; intermediates != nullptr && i < sk_X509_num(intermediates); ++i) {
    X509* cert = sk_X509_value(intermediates, i);
    c->der_.push_back(der_of(cert));
    c->not_after_ = std::min(c->not_after_, not_after_of(cert));
    if (X509_check_issued(cert, top) == X509_V_OK) {
      top = cert;  // the peer sends its chain leaf first; the last issuer found is the top
    }
  }
  if (auto id = spiffe::spiffe_id_of(leaf); id.ok()) {
    const spiffe::Bundle* bundle = bundles.find(id->trust_domain());
    c->not_after_ = std::min(c->not_after_, anchor_not_after(top, bundle));
  }
  std::string key = std::to_string(c->not_after_.time_since_epoch().count()) + '/' +
                    std::to_string(params.security_level) + '/' + std::to_string(params.max_depth) +
                    '/' + std::to_string(params.flags);
  for (const std::string& der : c->der_) {
    key += '/' + std::to_string(der.size()) + ':' + der;
  }
  return chain_table().intern(std::move(c), std::move(key));
}

spiffe::PeerVerification VerifiedChain::verify(const spiffe::BundleSet& bundles,
                                               std::chrono::system_clock::time_point now) const {
  base::X509Ptr leaf = parse_der(der_.front());
  base::X509StackPtr intermediates(sk_X509_new_null());
  bool parsed = leaf != nullptr && intermediates != nullptr;
  for (std::size_t i = 1; parsed && i < der_.size(); ++i) {
    base::X509Ptr cert = parse_der(der_[i]);
    parsed = cert != nullptr && sk_X509_push(intermediates.get(), cert.get()) > 0;
    if (parsed) {
      cert.release();  // now owned by the stack
    }
  }
  if (!parsed) {
    spiffe::PeerVerification failed;
    failed.rejection = spiffe::Rejection::kChainInvalid;
    failed.detail = "the kept certificate chain could not be parsed again";
    return failed;
  }
  // The same call the handshake's verify callback makes, with the parameters it had.
  return spiffe::verify_peer_chain(leaf.get(), intermediates.get(), bundles, now, params_);
}

}  // namespace spiffe_tunnel::tls
