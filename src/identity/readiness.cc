#include "spiffe_tunnel/identity/readiness.h"

namespace spiffe_tunnel::identity {

base::Result<std::shared_ptr<const spiffe::X509Svid>> check_ready(
    const Snapshot& snapshot, const ReadinessRequirement& want) {
  auto svid = want.svid.select(snapshot);
  if (!svid) {
    return svid.error();
  }
  std::vector<spiffe::TrustDomain> needed = want.trust_domains;
  if (needed.empty()) {
    needed.push_back((*svid)->id.trust_domain());
  }
  for (const auto& td : needed) {
    if (snapshot.bundles.find(td) != nullptr) {
      continue;
    }
    std::string held;
    for (const auto& h : snapshot.bundles.trust_domains()) {
      held += (held.empty() ? "" : ", ") + h.name();
    }
    return base::make_error("no bundle for trust domain " + td.name() + "; bundles held: " +
                            (held.empty() ? "none" : held));
  }
  return svid;
}

}  // namespace spiffe_tunnel::identity
