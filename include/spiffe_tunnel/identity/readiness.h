#pragma once
// Readiness of an identity for a workload that waits for it (spiffe-tunnel wait-ready): the SVID
// it will present is held, and so is the bundle of every trust domain whose peers it will verify.
// Pure functions of a Snapshot; any thread.

#include <memory>
#include <vector>

#include "spiffe_tunnel/base/result.h"
#include "spiffe_tunnel/identity/snapshot.h"
#include "spiffe_tunnel/spiffe/spiffe_id.h"

namespace spiffe_tunnel::identity {

struct ReadinessRequirement {
  SvidSelector svid;  // by ID, by hint, or the default (first)
  // Bundles that must be held; empty: the selected SVID's own trust domain.
  std::vector<spiffe::TrustDomain> trust_domains;
};

// The selected SVID when `snapshot` meets `want`. Otherwise an error naming what is missing and
// what is held: "no SVID with SPIFFE ID ... is held; the identity source has: ..." or "no bundle
// for trust domain td-c.test; bundles held: td-a.test, td-b.test".
base::Result<std::shared_ptr<const spiffe::X509Svid>> check_ready(
    const Snapshot& snapshot, const ReadinessRequirement& want);

}  // namespace spiffe_tunnel::identity
