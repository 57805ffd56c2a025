#include "spiffe_tunnel/policy/authorizer.h"

#include <algorithm>

namespace spiffe_tunnel::policy {
namespace {

template <typename T, typename F>
std::string join(const std::vector<T>& items, F&& fmt) {
  std::string out = "[";
  for (size_t i = 0; i < items.size(); ++i) {
    out += (i ? "," : "") + fmt(items[i]);
  }
  return out + "]";
}

}  // namespace

AllowListAuthorizer::AllowListAuthorizer(std::vector<spiffe::SpiffeId> ids,
                                         std::vector<spiffe::TrustDomain> tds,
                                         std::vector<spiffe::IdPattern> patterns, bool allow_any_verified)
    : ids_(std::move(ids)),
      tds_(std::move(tds)),
      patterns_(std::move(patterns)),
      allow_any_verified_(allow_any_verified) {}

Decision AllowListAuthorizer::authorize(const spiffe::SpiffeId& peer) const {
  if (std::find(ids_.begin(), ids_.end(), peer) != ids_.end()) {
    return Decision::allow("id " + peer.str() + " is listed");
  }
  if (std::find(tds_.begin(), tds_.end(), peer.trust_domain()) != tds_.end()) {
    return Decision::allow("trust domain " + peer.trust_domain().name() + " is listed");
  }
  for (const auto& p : patterns_) {
    if (p.matches(peer)) {
      return Decision::allow("matches pattern " + p.text());
    }
  }
  if (allow_any_verified_) {
    return Decision::allow("any verified peer is allowed");
  }
  return Decision::deny(peer.str() + " matches no rule (" + describe() + ")");
}

std::string AllowListAuthorizer::describe() const {
  if (allow_any_verified_ && ids_.empty() && tds_.empty() && patterns_.empty()) {
    return "any peer verified by a held bundle";
  }
  return "ids=" + join(ids_, [](const auto& i) { return i.str(); }) +
         " trust_domains=" + join(tds_, [](const auto& t) { return t.name(); }) +
         " patterns=" + join(patterns_, [](const auto& p) { return p.text(); });
}

}  // namespace spiffe_tunnel::policy
