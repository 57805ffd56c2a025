#include "workload/x509_context_merger.h"

#include <openssl/x509.h>

#include <algorithm>

namespace spiffe_tunnel::workload {
namespace {

bool same_svid(const spiffe::X509Svid& a, const spiffe::X509Svid& b) {
  return a.hint == b.hint && a.chain.size() == b.chain.size() &&
         std::equal(a.chain.begin(), a.chain.end(), b.chain.begin(),
                    [](const base::X509Ptr& x, const base::X509Ptr& y) {
                      return X509_cmp(x.get(), y.get()) == 0;
                    });
}

// Same SVIDs in the same order. Certificates are compared, not keys: the parser has checked that
// each key matches its leaf, so the same leaf means the same key pair.
bool same_svids(const std::vector<std::shared_ptr<const spiffe::X509Svid>>& a,
                const std::vector<std::shared_ptr<const spiffe::X509Svid>>& b) {
  return std::equal(a.begin(), a.end(), b.begin(), b.end(), [](const auto& x, const auto& y) {
    return x == y || same_svid(*x, *y);
  });
}

bool same_bundles(const BundleMap& a, const BundleMap& b) {
  return std::equal(a.begin(), a.end(), b.begin(), b.end(), [](const auto& x, const auto& y) {
    return x.first == y.first && (x.second == y.second || x.second->same_authorities(*y.second));
  });
}

}  // namespace

std::optional<X509Context> X509ContextMerger::take_svids(X509SvidMessage message) {
  if (same_svids(message.svids, svids_) && same_bundles(message.bundles, svid_stream_bundles_)) {
    return std::nullopt;
  }
  svids_ = std::move(message.svids);
  svid_stream_bundles_ = std::move(message.bundles);
  bundles_stream_newer_ = false;
  return publish_if_changed();
}

std::optional<X509Context> X509ContextMerger::take_bundles(BundleMap bundles) {
  if (same_bundles(bundles, bundles_stream_bundles_)) {
    return std::nullopt;
  }
  bundles_stream_bundles_ = std::move(bundles);
  bundles_stream_newer_ = true;
  return publish_if_changed();
}

void X509ContextMerger::clear() { *this = X509ContextMerger(); }

BundleMap X509ContextMerger::merged_bundles() const {
  const BundleMap& older = bundles_stream_newer_ ? svid_stream_bundles_ : bundles_stream_bundles_;
  const BundleMap& newer = bundles_stream_newer_ ? bundles_stream_bundles_ : svid_stream_bundles_;
  BundleMap merged = older;
  for (const auto& [td, bundle] : newer) {
    merged[td] = bundle;
  }
  return merged;
}

std::optional<X509Context> X509ContextMerger::publish_if_changed() {
  if (svids_.empty()) {
    return std::nullopt;
  }
  BundleMap bundles = merged_bundles();
  if (same_svids(svids_, published_svids_) && same_bundles(bundles, published_bundles_)) {
    return std::nullopt;
  }
  X509Context ctx;
  ctx.svids = svids_;
  for (const auto& [td, bundle] : bundles) {
    ctx.bundles.put(bundle);
  }
  published_svids_ = svids_;
  published_bundles_ = std::move(bundles);
  return ctx;
}

}  // namespace spiffe_tunnel::workload
